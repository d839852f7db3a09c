//! Replaying complete commits of the log into the index: what recovery hands over at open,
//! and what a read-only open that follows a writer reads at each refresh.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::index::{Committed, Index, PartIndex, StreamInfo};
use crate::log::format::EventRef;
use crate::log::recovery::{RecoveredEvent, Replay};

/// Replays recovered commits into the index.
pub(super) struct IndexReplay<'a> {
    pub(super) index: &'a Index,
    /// The scan passed removed frames: a stream's versions may jump forward.
    pub(super) gaps: bool,
}

impl Replay for IndexReplay<'_> {
    /// Indexes one recovered commit, checking that its versions follow the index's. The
    /// commit's parts go into the index in one step: a reader of a live refresh sees all of
    /// the commit or none of it.
    fn commit(&mut self, events: &[RecoveredEvent]) -> Result<()> {
        let index = self.index;
        let last = events.last().expect("a commit has frames");
        let committed = Committed {
            end: last.position + last.bytes.len() as u64,
            last_frame: Some(last.position),
        };
        let view = |i: usize| EventRef::new(&events[i].bytes);
        // What this commit's earlier parts did to a stream and to the largest id.
        let mut seen: std::collections::HashMap<&str, StreamInfo> =
            std::collections::HashMap::new();
        let mut above = index.max_id();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let stream = view(i).stream();
            let mut j = i + 1;
            while j < events.len() && view(j).stream() == stream {
                j += 1;
            }
            let mut before: StreamInfo = match seen.get(stream) {
                Some(info) => *info,
                None => index.stream_info(stream)?,
            };
            let first = EventRef::new(&events[i].bytes).version();
            if self.gaps && first > before.count {
                // The versions between were removed (scavenged or erased) with their frames.
                before.count = first;
            }
            for (k, e) in events[i..j].iter().enumerate() {
                let expected = before.count.checked_add(k as u64);
                let version = EventRef::new(&e.bytes).version();
                if Some(version) != expected {
                    return Err(Error::corrupt(
                        e.position,
                        format!(
                            "event of stream `{stream}` has version {version} where the index \
                             expects {}",
                            before.count
                        ),
                    ));
                }
            }
            let frames = events[i..j].iter().map(|e| {
                let v = EventRef::new(&e.bytes);
                let id = u128::from_be_bytes(v.event_id());
                (
                    e.position,
                    std::borrow::Cow::Owned(v.event_type().to_owned()),
                    id,
                )
            });
            let end = events[j - 1].position + events[j - 1].bytes.len() as u64;
            let part = PartIndex::new(Arc::from(stream), before, frames, end, above);
            above = above.max(part.ids.max());
            seen.insert(
                stream,
                StreamInfo {
                    id: before.id,
                    count: before.count + (j - i) as u64,
                },
            );
            parts.push(part);
            i = j;
        }
        index.apply(&parts, committed)?;
        // A deletion's metadata: the stream's next version is after the deleted ones (which a
        // scavenge may have removed from the log, or an import never brought).
        for e in events {
            let v = EventRef::new(&e.bytes);
            if let Some(stream) = crate::log::records::metadata_of(v.stream())
                && let Ok(m) = serde_json::from_slice::<crate::log::records::MetadataRecord>(
                    v.frame_slice(v.payload_range()),
                )
                && let Some(deleted_before) = m.deleted_before
            {
                index.raise_count(stream, deleted_before)?;
            }
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.index.flush_due()
    }

    fn flush(&mut self) -> Result<()> {
        while let Some(job) = self.index.freeze(false, false) {
            self.index.write_frozen(job)?;
        }
        Ok(())
    }

    fn gap(&mut self) {
        self.gaps = true;
    }
}
