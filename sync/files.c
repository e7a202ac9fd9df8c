#include "sync/files.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int under(const char *root, const char *path)
{
	size_t n = strlen(root);
	if (!strcmp(root, "/"))
		return path[0] == '/';
	return !strncmp(path, root, n) && (path[n] == '/' || path[n] == '\0');
}

char *files_inside(const char *root, const char *rel, struct err *e)
{
	char *path = NULL, *dir = NULL, *real = NULL;
	if (rel[0] == '/' || asprintf(&path, "%s/%s", root, rel) < 0) {
		if (rel[0] == '/')
			err_set(e, ERR_INVALID, "updateFile.path %s must be relative to the repo",
			        rel);
		else
			err_set(e, ERR_IO, "out of memory");
		free(path);
		return NULL;
	}
	/* the deepest existing ancestor must resolve inside the root */
	dir = strdup(path);
	if (!dir) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	while (!(real = realpath(dir, NULL))) {
		char *d;
		if (errno != ENOENT)
			break;
		d = dirname(dir);
		if (d != dir) { /* "." or "/" */
			real = realpath(d, NULL);
			break;
		}
	}
	if (!real || !under(root, real)) {
		err_set(e, ERR_INVALID, "updateFile.path %s resolves outside the repo %s", rel,
		        root);
		goto fail;
	}
	free(real);
	free(dir);
	return path;
fail:
	free(real);
	free(dir);
	free(path);
	return NULL;
}

int files_read(const char *path, size_t max, char **data, size_t *len, struct err *e)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	if (fd < 0)
		return err_errno(e, "%s", path);
	if (fstat(fd, &st)) {
		err_errno(e, "%s", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		err_set(e, ERR_INVALID, "%s is not a regular file", path);
		goto fail;
	}
	if ((uint64_t)st.st_size > max) {
		err_set(e, ERR_INVALID, "%s is larger than %zu bytes", path, max);
		goto fail;
	}
	buf = malloc(st.st_size + 1);
	if (!buf) {
		err_set(e, ERR_IO, "out of memory");
		goto fail;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_errno(e, "reading %s", path);
			goto fail;
		}
		if (n == 0)
			break;
		got += n;
	}
	buf[got] = '\0';
	close(fd);
	*data = buf;
	*len = got;
	return 0;
fail:
	free(buf);
	close(fd);
	return -1;
}

int files_replace(const char *path, const void *data, size_t len, struct err *e)
{
	char *tmp = NULL, *dcopy = NULL;
	struct stat st;
	const char *p = data;
	size_t left = len;
	int fd = -1, dfd = -1, rc = -1;
	if (stat(path, &st))
		return err_errno(e, "%s", path);
	if (asprintf(&tmp, "%s.labctl-XXXXXX", path) < 0)
		return err_set(e, ERR_IO, "out of memory");
	fd = mkstemp(tmp);
	if (fd < 0) {
		err_errno(e, "creating a temporary file next to %s", path);
		goto out;
	}
	if (fchmod(fd, st.st_mode & 07777)) {
		err_errno(e, "%s", tmp);
		goto out;
	}
	if (fchown(fd, st.st_uid, st.st_gid))
		(void)0; /* not permitted for others' files: keep our own ownership */
	while (left) {
		ssize_t n = write(fd, p, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err_errno(e, "writing %s", tmp);
			goto out;
		}
		p += n;
		left -= n;
	}
	if (fsync(fd) || close(fd)) {
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
	dcopy = strdup(path);
	if (dcopy) {
		dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
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
	free(dcopy);
	return rc;
}

int files_github_output(const char *key, const char *value, struct err *e)
{
	const char *path = getenv("GITHUB_OUTPUT");
	FILE *f;
	if (!path || !*path)
		return 0;
	f = fopen(path, "a");
	if (!f)
		return err_errno(e, "GITHUB_OUTPUT %s", path);
	fprintf(f, "%s=%s\n", key, value);
	if (fclose(f))
		return err_errno(e, "writing GITHUB_OUTPUT %s", path);
	return 0;
}
