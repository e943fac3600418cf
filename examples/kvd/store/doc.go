// Package store is the storage engine of kvd, the example key-value daemon:
// an in-memory map made durable by a write-ahead log with group commit, and
// a snapshot written when the store is sealed for a handoff.
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
//   - A failed write or fsync of the log fails every write of its batch and of
//     the batches queued behind it, and the store refuses writes from then on
//     (ErrFailed). It never retries an fsync: after a failed fsync the kernel
//     may have dropped the dirty pages, so only a restart that recovers from
//     disk is safe.
//   - Seal refuses new writes (ErrSealed), waits for the batch being
//     committed, writes a snapshot atomically, empties the log and closes the
//     files. Reopen reads the directory again, because another process (a
//     successor that later died) may have written after the seal.
//
// # Files
//
// The data directory holds kv.snap and kv.wal (and whatever else the daemon
// keeps there, such as the handoff lock).
//
// kv.wal is a sequence of records, each
//
//	length  uint32 LE   length of payload
//	crc     uint32 LE   CRC-32C (Castagnoli) of payload
//	payload op byte (1 put, 2 delete) | revision uint64 LE |
//	        uvarint key length | key | (put only) uvarint value length | value
//
// Revisions are consecutive. A crash can damage only the batch whose
// fsync had not returned, and none of its writes was acknowledged. On open,
// damage (a partial record, a bad length or checksum, zeros) is a torn tail
// when it lies within one batch's length of the end of the log and no
// intact record continuing the revisions follows it: the tail is cut off
// and reported in Recovery. Anything else could be an acknowledged write
// gone bad, so Open fails with a *CorruptError naming the offset and keeps
// the file as it is.
//
// kv.snap is written to a temporary file, fsync'd, renamed over and the
// directory fsync'd:
//
//	"KVDSNAP1" | revision uint64 LE | count uint64 LE |
//	count × (uvarint key length | key | uvarint value length | value), keys ascending |
//	CRC-32C of everything before it, uint32 LE
//
// Log records at or below the snapshot's revision (left by a crash between
// the snapshot's rename and the log's truncation) are skipped on replay, and
// a log holding nothing else is emptied on open.
package store
