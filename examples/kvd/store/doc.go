// Package store is the storage engine of kvd, the example key-value daemon:
// an in-memory map made durable by a write-ahead log with group commit,
// kept in segments that a background compactor merges into a snapshot.
// It is built for handoffs whose pause does not grow with the data: the
// successor loads the store read-only while the incumbent still writes
// (Prepare), the incumbent seals in constant time (Seal), and the
// successor only catches up with what was written since (Warm.Open).
//
// # Guarantees
//
//   - Put and Delete return only after the record is fsync'd. Concurrent
//     writers share fsyncs (group commit): the first writer of an idle store
//     writes and fsyncs; the writers that queue meanwhile form the next batch,
//     whose first writer commits it once the previous fsync returned.
//   - Every write has its own revision, one more than the previous one, across
//     seals, reopens and processes. Revision reports the last durable one;
//     readers never see a write that is not durable yet.
//   - A failed fsync of the log (or of the directory, when a new segment
//     starts) fails every write of its batch and of the batches queued
//     behind it, and the store refuses writes from then on (ErrFailed). It
//     never retries an fsync: after a failed fsync the kernel may have
//     dropped the dirty pages, so only a restart that recovers from disk is
//     safe. Reads go on: every acknowledged write is in memory.
//   - A failed write of the log that is not an fsync's (a full or
//     read-only disk) fails its batch and those queued behind it
//     (ErrWriteFailed) and cuts off, and fsyncs, whatever the write
//     appended, so that nothing of a write its caller was told failed
//     comes back; their revisions are handed out again. The store stays
//     open: each write tries again, and writes work as soon as the disk
//     takes them. Check answers the cause until a write succeeds.
//   - Opening never needs the disk to take a write: if the log cannot be
//     opened for writing (the first segment created, a torn tail cut) the
//     store opens with every durable write, serves reads, refuses writes
//     with ErrWriteFailed (Recovery.WriteErr says why), and its first write
//     that finds the disk writable does what was left, then writes.
//   - Sync, which a handoff's drain calls, waits for the batch in flight
//     and fsyncs the active segment; Seal refuses new writes (ErrSealed),
//     waits for the batch being committed, cancels a running compaction
//     and waits for it (it stops at its next chunk, about 256 KiB, and
//     removes its temporary file), fsyncs the active segment and closes it.
//     Neither writes anything: every acknowledged write is fsync'd
//     already, so their fsyncs cost next to nothing and do not depend on
//     the data, and one that fails fails the store as above. A store whose
//     log is not open for writing is neither synced nor sealed
//     (ErrWriteFailed), so a handoff aborts before anything stops.
//   - Reopen of a failed store does nothing and returns nil: a failed
//     store was never sealed, so nobody else wrote; it serves reads and
//     refuses writes on.
//   - Prepare only reads, without the data-directory lock, while another
//     process may be writing and compacting the directory. Warm.Open and
//     Reopen (the lock held, the writer sealed) apply what follows the
//     position they start from with the full recovery rules below, and load
//     the directory in full, saying so in Recovery, if compactions deleted
//     segments they had not read.
//   - Fingerprint is the position the state ends at in the log, computed in
//     constant time; the sealer and the store that caught up with it report
//     the same.
//
// # Files
//
// The data directory holds a snapshot, kv.snap, and the log: segments
// kv.wal (sequence number 0, the single log file of the earlier layout),
// kv-00000001.wal, kv-00000002.wal, ... (at least eight digits; longer
// numbers are written in full). Sequence numbers are consecutive. The
// writer appends to the newest segment; once it holds SegmentBytes (64 MiB
// by default) the committer of the batch that filled it creates the next
// segment and fsyncs the directory before the next batch is written, so a
// closed segment is complete and never written again. Temporary snapshots
// are named kv.snap.tmp-*. Whatever else the daemon keeps there (the
// handoff lock) is left alone.
//
// A segment is a sequence of records, each
//
//	length  uint32 LE   length of payload
//	crc     uint32 LE   CRC-32C (Castagnoli) of payload
//	payload op byte (1 put, 2 delete) | revision uint64 LE |
//	        uvarint key length | key | (put only) uvarint value length | value
//
// Revisions are consecutive inside a segment and across the log. A crash
// can damage only the batch whose fsync had not returned, and none of its
// writes was acknowledged, so damage is judged in the newest segment only:
// there it is a torn tail when it lies within one batch's length of the end
// and no intact record continuing the revisions follows it; the tail is cut
// off and reported in Recovery. Anything else (and any damage in a closed
// segment) could be an acknowledged write gone bad, so Open fails with a
// *CorruptError naming the file and offset and keeps the file as it is.
//
// The snapshot holds the whole state at a revision. Version 2, written by
// the compactor:
//
//	"KVDSNAP2" | revision uint64 LE |
//	entries (uvarint key length ≥ 1 | key | uvarint value length | value), keys ascending |
//	0x00 (the end of the entries) | count uint64 LE |
//	CRC-32C of everything before it, uint32 LE
//
// Version 1, written by the earlier layout and still read:
//
//	"KVDSNAP1" | revision uint64 LE | count uint64 LE |
//	count × (uvarint key length | key | uvarint value length | value), keys ascending |
//	CRC-32C of everything before it, uint32 LE
//
// A snapshot is read as a stream and used only once its checksum matched
// at the end: a torn or damaged one fails with a *CorruptError, it is never
// partly loaded. Log records at or below the snapshot's revision are in it
// and skipped on replay; beyond it, each record must be the next revision.
//
// # Compaction
//
// The compactor is a goroutine of the store that holds the lock, started
// when the store becomes writable and stopped by Seal and Close. When the
// closed segments beyond the snapshot hold at least half the snapshot's
// size (or on Compact), it reads the snapshot and those segments from disk,
// not from the in-memory map, so writers are not held up, and streams
// their merge into a temporary file, fsync'd every 8 MiB as it grows. Then
// it fsyncs it, renames it over kv.snap, fsyncs the directory, and only
// then deletes the segments the new snapshot covers, oldest first. A crash
// at any step leaves either the old snapshot or the new one, and a log that
// continues from it: a temporary snapshot is never loaded (the lock
// holder's compactor removes those left behind), and segments the snapshot
// covers are skipped and deleted later.
//
// A compaction starts only if the filesystem has room for the new
// snapshot (at most the old one and the segments it merges) and 4 MiB
// for the log besides: one that would fill the disk would fail the
// writers' batches meanwhile. Otherwise it is postponed, CompactionStats
// saying why (an error matching ENOSPC), until the next segment closes or
// Compact is called.
//
// Freeing a big file's blocks is slow (on ext4 hundreds of milliseconds a
// gigabyte), and it happens at the last close of an unlinked file. Files
// the store unlinks (segments, cancelled temporary snapshots, the snapshot a
// rename replaces) are held open across the unlink and closed by reaper
// goroutines that Close joins and Seal does not wait for.
//
// # Warm-up and catch-up
//
// Prepare opens the segments it lists before it opens the snapshot: a
// segment deleted meanwhile was covered by a snapshot renamed into place
// before the deletion, which is therefore the one it opens (or an even
// newer one). It reads the newest segment up to its last complete record
// (the writer may be in the middle of a batch) and reads again what was
// appended while it read, a few passes. It keeps the position (segment,
// offset) with that segment open, so the rest of it is readable even after
// a compaction deleted it. Warm.Open lists the segments again and reads
// the rest of that segment and the segments after it, whose sequence
// numbers must follow on; a gap means compactions deleted what it never
// read, and it loads in full instead.
package store
