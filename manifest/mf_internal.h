/* Internal to manifest/: the rules on single values, templates and regexes,
 * shared by the loader (manifest.c) and the helpers (template.c).
 *
 * Every rule function writes, on failure, a complete message
 * "WHAT ... is wrong; what to change" into why[n] and returns -1. */
#ifndef IMGSTORE_MANIFEST_MF_INTERNAL_H
#define IMGSTORE_MANIFEST_MF_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "common/hash.h"
#include "manifest/manifest.h"

#include <pcre2.h>
#include <stddef.h>

#if PCRE2_MAJOR < 10 || (PCRE2_MAJOR == 10 && PCRE2_MINOR < 38)
#error "manifest/ needs PCRE2 >= 10.38 (PCRE2_SUBSTITUTE_LITERAL)"
#endif

#define MF_WHY_MAX 1024

/* s as a double-quoted string for messages: control characters, '"' and
 * '\' escaped, long values shortened with "...".  Always NUL-terminates. */
#define MF_QUOTE_MAX 160
void mf_quote(char out[MF_QUOTE_MAX], const char *s);

/* The candidate closest to word (edit distance, case-insensitive), if close
 * enough to be a likely typo; else NULL.  Looks at most at 1000 candidates. */
const char *mf_closest(const char *word, const char *const *cands, size_t n);

int mf_rule_name(const char *what, const char *s, char *why, size_t n);
int mf_rule_url(const char *what, const char *s, char *why, size_t n);
/* On success *alg is the checksum's algorithm. */
int mf_rule_checksum(const char *what, const char *s, enum hash_alg *alg, char *why, size_t n);
int mf_rule_destination(const char *what, const char *s, char *why, size_t n);
int mf_rule_repo_path(const char *what, const char *s, char *why, size_t n);
int mf_rule_output(const char *what, const char *s, char *why, size_t n);

/* Check a replacement value template (what names it in the message). */
int mf_template_check(const char *what, const char *tmpl, char *why, size_t n);

/* Compile a replacement pattern with the options that accept RE2/Go syntax;
 * refuses patterns that can match the empty string.  *out (when out is not
 * NULL) must be freed with pcre2_code_free. */
int mf_regex_compile(const char *what, const char *pattern, pcre2_code **out, char *why, size_t n);

#endif
