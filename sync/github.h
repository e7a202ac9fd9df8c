/* What labctl tells GitHub Actions when it runs there (GITHUB_ACTIONS=true):
 * workflow-command annotations, the job summary and step outputs. */
#ifndef IMGSTORE_SYNC_GITHUB_H
#define IMGSTORE_SYNC_GITHUB_H

#include "common/buf.h"
#include "common/err.h"

#include <stdio.h>

struct mf_problems;

/* 1 when GITHUB_ACTIONS=true. */
int github_actions(void);

/* "::error file=F,line=L,col=C::MESSAGE" on out, with GitHub's escaping
 * (properties: % \r \n : ,; the message: % \r \n). */
void github_annotate(FILE *out, const char *level, const char *file, int line, int col,
                     const char *msg);
/* Each problem as an ::error annotation on stdout, when github_actions(). */
void github_annotate_problems(const struct mf_problems *p);

/* Append "key=value\n" to $GITHUB_OUTPUT when it is set (0 when unset). */
int github_output(const char *key, const char *value, struct err *e);
/* Append markdown to $GITHUB_STEP_SUMMARY when github_actions() and it is set. */
int github_summary(const char *markdown, size_t len, struct err *e);
/* Append s to a Markdown table cell: "|" escaped, line breaks as spaces. */
int github_md_cell(struct buf *b, const char *s);

#endif
