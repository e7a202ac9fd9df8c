#include "sync/files.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
