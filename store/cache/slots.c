/* The slot file of the block cache (see slots.h). */
#include "store/cache/slots.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* O_DIRECT wants the buffer, the offset and the length aligned to the
 * device's logical block; 4 KiB covers every device in use. */
#define DIRECT_ALIGN 4096u

int slots_open(struct slots *s, const char *path)
{
	s->direct_fd = -1;
	s->bounce = NULL;
	s->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->fd < 0)
		return -1;
	/* Refused by some file systems (FUSE and overlay ones, tmpfs before
	 * Linux 6.6): the slots are then written through the page cache. */
	s->direct_fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	return 0;
}

void slots_close(struct slots *s)
{
	if (s->direct_fd >= 0)
		close(s->direct_fd);
	if (s->fd >= 0)
		close(s->fd);
	free(s->bounce);
	s->fd = s->direct_fd = -1;
	s->bounce = NULL;
}

static int write_full(int fd, const unsigned char *p, size_t n, off_t off)
{
	while (n) {
		ssize_t k = pwrite(fd, p, n, off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0) {
			errno = ENOSPC;
			return -1;
		}
		p += k;
		n -= (size_t)k;
		off += k;
	}
	return 0;
}

int slots_write(struct slots *s, uint64_t slot, const void *data)
{
	const unsigned char *src = data;
	off_t off = (off_t)(slot * SLOT_SIZE);
	if (s->direct_fd >= 0 && ((uintptr_t)src % DIRECT_ALIGN) != 0) {
		if (!s->bounce)
			s->bounce = aligned_alloc(DIRECT_ALIGN, SLOT_SIZE);
		if (s->bounce) {
			memcpy(s->bounce, src, SLOT_SIZE);
			src = s->bounce;
		}
	}
	if (s->direct_fd >= 0 && ((uintptr_t)src % DIRECT_ALIGN) == 0) {
		if (write_full(s->direct_fd, src, SLOT_SIZE, off) == 0)
			return 0;
		if (errno != EINVAL)
			return -1;
		/* the file system took the open but not the write */
		close(s->direct_fd);
		s->direct_fd = -1;
	}
	return write_full(s->fd, data, SLOT_SIZE, off);
}

ssize_t slots_read(const struct slots *s, uint64_t slot, size_t off, void *buf, size_t n)
{
	unsigned char *p = buf;
	size_t got = 0;
	off_t at = (off_t)(slot * SLOT_SIZE + off);
	while (got < n) {
		ssize_t k = pread(s->fd, p + got, n - got, at + (off_t)got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0)
			break;
		got += (size_t)k;
	}
	return (ssize_t)got;
}

int slots_copy(struct slots *s, uint64_t from, uint64_t to)
{
	ssize_t got;
	if (!s->bounce && !(s->bounce = aligned_alloc(DIRECT_ALIGN, SLOT_SIZE)))
		return -1;
	got = slots_read(s, from, 0, s->bounce, SLOT_SIZE);
	if (got < 0)
		return -1;
	if (got < (ssize_t)SLOT_SIZE)
		return 0;
	return slots_write(s, to, s->bounce) ? -1 : 1;
}

int slots_sync(struct slots *s)
{
	return fdatasync(s->fd);
}

int slots_trim(struct slots *s, uint64_t nslots)
{
	struct stat st;
	off_t want = (off_t)(nslots * SLOT_SIZE);
	if (fstat(s->fd, &st))
		return -1;
	return st.st_size > want ? ftruncate(s->fd, want) : 0;
}
