#include "sync/files.h"

#include "common/buf.h"
#include "common/file.h"
#include "manifest/manifest.h"

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

/* One updateFile: the file exists inside the repo and each pattern matches. */
static int check_one(const struct mf_image *img, const struct mf_update_file *uf, const char *root,
                     struct mf_problems *probs)
{
	struct mf_apply_result res = {0};
	struct buf text = BUF_INIT;
	struct err fe = {0};
	char *path = files_inside(root, uf->path, &fe);
	int rc = 0;
	if (!path) {
		rc = mf_problems_add(probs, uf->pos.line, uf->pos.col, img->name,
		                     "updateFile %s: %s", uf->path, fe.msg);
		goto out;
	}
	if (file_read_all(path, FILES_UPDATE_MAX, &text, &fe)) {
		rc = mf_problems_add(probs, uf->pos.line, uf->pos.col, img->name,
		                     fe.code == ERR_NOTFOUND
		                             ? "updateFile.path %s does not exist in %s; create it "
		                               "or correct the path"
		                             : "updateFile.path %s cannot be read in %s",
		                     uf->path, root);
		goto out;
	}
	if (mf_apply_replacements(img, uf, text.data ? text.data : "", text.len, &res, &fe)) {
		rc = mf_problems_add(probs, uf->pos.line, uf->pos.col, img->name,
		                     "updateFile %s: %s", uf->path, fe.msg);
		goto out;
	}
	for (size_t k = 0; k < res.nmatches && !rc; k++)
		if (!res.matches[k])
			rc = mf_problems_add(
			        probs, uf->replacements[k].pos.line, uf->replacements[k].pos.col,
			        img->name,
			        "updateFile %s: pattern matches nothing in the file, so "
			        "this pin would never be updated; correct the pattern or "
			        "the file",
			        uf->path);
out:
	mf_apply_result_free(&res);
	buf_free(&text);
	free(path);
	return rc;
}

int files_check(const struct manifest *m, const char *root, struct mf_problems *probs,
                struct err *e)
{
	for (size_t i = 0; i < m->nimages; i++)
		for (size_t u = 0; u < m->images[i].nupdate_files; u++)
			if (check_one(&m->images[i], &m->images[i].update_files[u], root, probs))
				return err_set(e, ERR_IO, "out of memory");
	if (mf_problems_sort(probs))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}
