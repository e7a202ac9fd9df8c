/* The block cache's slot file, <cache-dir>/blocks.dat: blocks of exactly
 * SLOT_SIZE bytes at fixed offsets (slot * SLOT_SIZE).  Which slot holds
 * which block, and which slots are free, is cache.db's business (cache.c);
 * this module only moves bytes.
 *
 * Why a file of its own: SQLite can only write through the page cache, and
 * on this kind of machine that costs 2.2-2.5 CPU s per GiB into new blocks
 * (the kernel's copy in, then writeback), against 0.1 with O_DIRECT
 * (tests/bench/cache_bench).  So slots are written around the page cache
 * where the file system allows it, and read through it (warm reads are a
 * pread of a cached file page).
 *
 * Calls return 0, or -1 with errno set, as the system calls they wrap. */
#ifndef IMGSTORE_STORE_CACHE_SLOTS_H
#define IMGSTORE_STORE_CACHE_SLOTS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SLOT_SIZE (1u << 20)

struct slots {
	int fd;                /* reads; writes where O_DIRECT is refused */
	int direct_fd;         /* the same file opened O_DIRECT, or -1 */
	unsigned char *bounce; /* SLOT_SIZE, aligned: data that O_DIRECT cannot take as is */
};

/* Opens (creates 0600) path.  The struct is usable for slots_close() on
 * every return. */
int slots_open(struct slots *s, const char *path);
void slots_close(struct slots *s);
/* SLOT_SIZE bytes of data into slot (not thread-safe: one writer). */
int slots_write(struct slots *s, uint64_t slot, const void *data);
/* Bytes [off, off + n) of slot into buf: the count read (short at the end of
 * the file), or -1.  Thread-safe. */
ssize_t slots_read(const struct slots *s, uint64_t slot, size_t off, void *buf, size_t n);
/* The bytes of slot `from` into slot `to`: 1 copied, 0 `from` is cut short
 * (the file is shorter than it), -1 an error. */
int slots_copy(struct slots *s, uint64_t from, uint64_t to);
/* Everything written is on disk (fdatasync). */
int slots_sync(struct slots *s);
/* Cuts the file to nslots slots when it is longer. */
int slots_trim(struct slots *s, uint64_t nslots);

#endif
