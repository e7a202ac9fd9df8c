#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int file_read_all(const char *path, size_t max, struct buf *b, struct err *e)
{
	int is_stdin = !strcmp(path, "-");
	int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	int rc = -1;
	struct stat st;
	if (fd < 0)
		return err_errno(e, "%s", path);
	/* Reserve once for a regular file: realloc would leave copies of a
	 * secret behind in freed memory. */
	if (!fstat(fd, &st) && S_ISREG(st.st_mode) && (size_t)st.st_size <= max &&
	    buf_reserve(b, (size_t)st.st_size + 1)) {
		err_set(e, ERR_IO, "%s: out of memory", path);
		goto out;
	}
	for (;;) {
		ssize_t n;
		if (b->len + 1 >= b->cap && buf_reserve(b, 64 * 1024)) {
			err_set(e, ERR_IO, "%s: out of memory", path);
			goto out;
		}
		n = read(fd, b->data + b->len, b->cap - b->len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_errno(e, "reading %s", is_stdin ? "standard input" : path);
			goto out;
		}
		if (n == 0)
			break;
		b->len += (size_t)n;
		b->data[b->len] = '\0';
		if (b->len > max) {
			err_set(e, ERR_INVALID, "%s: larger than %zu bytes", path, max);
			goto out;
		}
	}
	rc = 0;
out:
	if (!is_stdin)
		close(fd);
	return rc;
}

static int write_all(int fd, const char *p, size_t left)
{
	while (left) {
		ssize_t n = write(fd, p, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		left -= (size_t)n;
	}
	return 0;
}

int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode, struct err *e)
{
	struct stat st;
	char *tmp = NULL, *dir = NULL;
	int fd = -1, dfd, rc = -1;
	int exists = stat(path, &st) == 0;
	if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0) {
		tmp = NULL;
		return err_set(e, ERR_IO, "out of memory");
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		err_errno(e, "creating a temporary file next to %s", path);
		free(tmp);
		return -1;
	}
	if (fchmod(fd, exists ? st.st_mode & 07777 : mode)) {
		err_errno(e, "%s", tmp);
		goto out;
	}
	/* Keeping the owner needs privileges we may not have: then the file
	 * becomes ours, which is what an editor would do too. */
	if (exists && fchown(fd, st.st_uid, st.st_gid))
		(void)0;
	if (write_all(fd, data, len) || fsync(fd)) {
		err_errno(e, "writing %s", tmp);
		goto out;
	}
	if (close(fd)) {
		fd = -1;
		err_errno(e, "writing %s", tmp);
		goto out;
	}
	fd = -1;
	if (rename(tmp, path)) {
		err_errno(e, "renaming %s to %s", tmp, path);
		goto out;
	}
	free(tmp);
	tmp = NULL;
	dir = strdup(path);
	if (dir) {
		dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	free(dir);
	return rc;
}
