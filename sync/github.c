#include "sync/github.h"

#include "manifest/manifest.h"

#include <stdlib.h>
#include <string.h>

int github_actions(void)
{
	const char *v = getenv("GITHUB_ACTIONS");
	return v && !strcmp(v, "true");
}

/* GitHub's workflow-command escaping: without it a message holding a newline
 * ends the command early, and a ":" or "," in a property splits it. */
static void escape(FILE *out, const char *s, int property)
{
	for (; *s; s++) {
		switch (*s) {
		case '%': fputs("%25", out); break;
		case '\r': fputs("%0D", out); break;
		case '\n': fputs("%0A", out); break;
		case ':': fputs(property ? "%3A" : ":", out); break;
		case ',': fputs(property ? "%2C" : ",", out); break;
		default: fputc(*s, out);
		}
	}
}

void github_annotate(FILE *out, const char *level, const char *file, int line, int col,
                     const char *msg)
{
	fprintf(out, "::%s file=", level);
	escape(out, file, 1);
	fprintf(out, ",line=%d,col=%d::", line, col);
	escape(out, msg, 0);
	fputc('\n', out);
}

void github_annotate_problems(const struct mf_problems *p)
{
	if (!github_actions())
		return;
	for (size_t i = 0; i < p->n; i++) {
		char *msg = mf_problem_message(p, i);
		if (msg)
			github_annotate(stdout, "error", mf_problems_file(p), p->v[i].line,
			                p->v[i].col, msg);
		free(msg);
	}
	fflush(stdout);
}

static int append_to(const char *var, const char *data, size_t len, struct err *e)
{
	const char *path = getenv(var);
	FILE *f;
	if (!path || !*path)
		return 0;
	f = fopen(path, "a");
	if (!f)
		return err_errno(e, "%s %s", var, path);
	if (fwrite(data, 1, len, f) != len) {
		fclose(f);
		return err_errno(e, "writing %s %s", var, path);
	}
	if (fclose(f))
		return err_errno(e, "writing %s %s", var, path);
	return 0;
}

int github_output(const char *key, const char *value, struct err *e)
{
	char *line = NULL;
	int n = asprintf(&line, "%s=%s\n", key, value), rc;
	if (n < 0)
		return err_set(e, ERR_IO, "out of memory");
	rc = append_to("GITHUB_OUTPUT", line, (size_t)n, e);
	free(line);
	return rc;
}

int github_summary(const char *markdown, size_t len, struct err *e)
{
	if (!github_actions())
		return 0;
	return append_to("GITHUB_STEP_SUMMARY", markdown, len, e);
}

int github_md_cell(struct buf *b, const char *s)
{
	for (; s && *s; s++) {
		int rc = *s == '|'                    ? buf_append(b, "\\|", 2)
		         : (*s == '\n' || *s == '\r') ? buf_append(b, " ", 1)
		                                      : buf_append(b, s, 1);
		if (rc)
			return -1;
	}
	return 0;
}
