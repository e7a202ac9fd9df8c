/* Replacement values ({{ .Variable }} templates), patterns (PCRE2 in an
 * RE2/Go-compatible mode) and applying an image's updateFile to a text. */
#include "common/buf.h"
#include "manifest/mf_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum var { VAR_URL, VAR_CHECKSUM, VAR_NAME, VAR_DESTINATION, NVARS };

static const char *const var_names[NVARS] = {".Source.URL", ".Source.Checksum", ".Name",
                                             ".Destination"};

#define VAR_LIST "{{ .Source.URL }}, {{ .Source.Checksum }}, {{ .Name }} or {{ .Destination }}"

static int why_set(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int why_set(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
	return -1;
}

static const char *var_value(const struct mf_image *img, enum var v)
{
	const char *s = NULL;
	switch (v) {
	case VAR_URL: s = img->source.url; break;
	case VAR_CHECKSUM: s = img->source.checksum; break;
	case VAR_NAME: s = img->name; break;
	case VAR_DESTINATION: s = img->destination; break;
	case NVARS: break;
	}
	return s ? s : "";
}

/* Walk a template: literal text and variables go to out (when out is not
 * NULL); 0, or -1 with the reason in why. */
static int tmpl_walk(const char *what, const char *t, const struct mf_image *img, struct buf *out,
                     char *why, size_t n)
{
	const char *p = t;
	for (;;) {
		const char *open = strstr(p, "{{"), *close, *a, *b;
		size_t l;
		int v;
		if (!open) {
			if (out && buf_appends(out, p))
				return why_set(why, n, "out of memory");
			return 0;
		}
		if (out && buf_append(out, p, (size_t)(open - p)))
			return why_set(why, n, "out of memory");
		close = strstr(open + 2, "}}");
		if (!close)
			return why_set(why, n,
			               "%s has \"{{\" without a closing \"}}\"; close it or remove "
			               "the braces",
			               what);
		a = open + 2;
		b = close;
		while (a < b && isspace((unsigned char)*a))
			a++;
		while (b > a && isspace((unsigned char)b[-1]))
			b--;
		l = (size_t)(b - a);
		for (v = 0; v < NVARS; v++)
			if (strlen(var_names[v]) == l && !memcmp(a, var_names[v], l))
				break;
		if (v == NVARS) {
			char q[MF_QUOTE_MAX], *inner = strndup(a, l), *action = NULL;
			const char *sugg;
			if (!inner || asprintf(&action, "{{ %s }}", inner) < 0) {
				free(inner);
				return why_set(why, n, "out of memory");
			}
			mf_quote(q, action);
			sugg = mf_closest(inner, var_names, NVARS);
			free(inner);
			free(action);
			if (sugg)
				return why_set(
				        why, n,
				        "%s uses the unknown template variable %s; did you mean "
				        "\"{{ %s }}\"?",
				        what, q, sugg);
			return why_set(why, n,
			               "%s uses the unknown template variable %s; use " VAR_LIST,
			               what, q);
		}
		if (out && buf_appends(out, var_value(img, (enum var)v)))
			return why_set(why, n, "out of memory");
		p = close + 2;
	}
}

int mf_template_check(const char *what, const char *tmpl, char *why, size_t n)
{
	return tmpl_walk(what, tmpl, NULL, NULL, why, n);
}

int mf_expand_template(const struct mf_image *img, const char *tmpl, char **out, struct err *e)
{
	struct buf b = BUF_INIT;
	char why[MF_WHY_MAX];
	*out = NULL;
	if (tmpl_walk("the value", tmpl, img, &b, why, sizeof(why))) {
		buf_free(&b);
		return err_set(e, strcmp(why, "out of memory") ? ERR_INVALID : ERR_IO, "%s", why);
	}
	if (!b.data && buf_appends(&b, "")) /* an empty template */
		return err_set(e, ERR_IO, "out of memory");
	*out = buf_steal(&b);
	return 0;
}

const char *mf_image_effective_checksum(const struct mf_image *img)
{
	return img->validation.expected ? img->validation.expected : img->source.checksum;
}

/* RE2/Go semantics where PCRE2 differs by default: UTF-8 text (invalid bytes
 * in the subject never match instead of failing), "$" only at the very end
 * unless (?m), no "\C". \s \d \w stay ASCII, as in Go. */
#define RE_OPTIONS                                                                                 \
	(PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_NEVER_BACKSLASH_C)
#define RE_MAX_PATTERN 65536
#define RE_MATCH_LIMIT 10000000u /* backtracking steps per match attempt */
#define RE_HEAP_LIMIT  65536u    /* KiB of backtracking memory */

int mf_regex_compile(const char *what, const char *pattern, pcre2_code **out, char *why, size_t n)
{
	pcre2_compile_context *cc = NULL;
	pcre2_code *re = NULL;
	int errcode = 0, rc = -1;
	PCRE2_SIZE erroff = 0;
	uint32_t minlen = 0;
	if (out)
		*out = NULL;
	if (!*pattern)
		return why_set(why, n,
		               "%s is empty; write a regular expression that matches the text to "
		               "replace",
		               what);
	cc = pcre2_compile_context_create(NULL);
	if (!cc)
		return why_set(why, n, "out of memory");
	pcre2_set_max_pattern_length(cc, RE_MAX_PATTERN);
	re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, RE_OPTIONS, &errcode,
	                   &erroff, cc);
	if (!re) {
		PCRE2_UCHAR msg[256];
		if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
			snprintf((char *)msg, sizeof(msg), "error %d", errcode);
		why_set(why, n,
		        "%s does not compile: %s at offset %zu; fix the regular expression (RE2/Go "
		        "syntax, e.g. name\\s*=\\s*\"[^\"]*\")",
		        what, (const char *)msg, (size_t)erroff);
		goto out;
	}
	if (pcre2_pattern_info(re, PCRE2_INFO_MINLENGTH, &minlen) == 0 && minlen == 0) {
		char q[MF_QUOTE_MAX];
		mf_quote(q, pattern);
		why_set(why, n,
		        "%s %s can match an empty string, which would insert the value at every "
		        "such place; make it match at least one character",
		        what, q);
		goto out;
	}
	rc = 0;
	if (out) {
		*out = re;
		re = NULL;
	}
out:
	pcre2_code_free(re);
	pcre2_compile_context_free(cc);
	return rc;
}

void mf_apply_result_free(struct mf_apply_result *res)
{
	if (!res)
		return;
	free(res->text);
	free(res->matches);
	memset(res, 0, sizeof(*res));
}

/* One global literal substitution of value for re in *text (replaced). */
static int substitute(pcre2_code *re, pcre2_match_context *mc, char **text, size_t *len,
                      const char *value, size_t *count, const char *what, struct err *e)
{
	pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
	const uint32_t opts = PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_LITERAL |
	                      PCRE2_SUBSTITUTE_OVERFLOW_LENGTH;
	PCRE2_SIZE cap = *len + strlen(value) + 64, outlen;
	char *outbuf = NULL;
	int rc = -1, r;
	if (!md)
		return err_set(e, ERR_IO, "out of memory");
	for (int attempt = 0; attempt < 2; attempt++) {
		free(outbuf);
		outbuf = malloc(cap);
		if (!outbuf) {
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		outlen = cap;
		r = pcre2_substitute(re, (PCRE2_SPTR)*text, *len, 0, opts, md, mc,
		                     (PCRE2_SPTR)value, PCRE2_ZERO_TERMINATED,
		                     (PCRE2_UCHAR *)outbuf, &outlen);
		if (r == PCRE2_ERROR_NOMEMORY && attempt == 0) {
			cap = outlen; /* the length needed, terminating NUL included */
			continue;
		}
		if (r < 0) {
			PCRE2_UCHAR msg[256];
			if (pcre2_get_error_message(r, msg, sizeof(msg)) < 0)
				snprintf((char *)msg, sizeof(msg), "error %d", r);
			err_set(e, ERR_INVALID, "%s: %s; simplify the pattern", what,
			        (const char *)msg);
			goto out;
		}
		*count = (size_t)r;
		free(*text);
		*text = outbuf;
		*len = outlen;
		outbuf = NULL;
		rc = 0;
		break;
	}
out:
	free(outbuf);
	pcre2_match_data_free(md);
	return rc;
}

int mf_apply_replacements(const struct mf_image *img, const struct mf_update_file *uf,
                          const char *text, size_t len, struct mf_apply_result *res, struct err *e)
{
	pcre2_match_context *mc = NULL;
	char *cur = NULL, *value = NULL;
	size_t curlen = len;
	int rc = -1;

	memset(res, 0, sizeof(*res));
	if (uf->nreplacements) {
		res->matches = calloc(uf->nreplacements, sizeof(*res->matches));
		if (!res->matches)
			return err_set(e, ERR_IO, "out of memory");
	}
	res->nmatches = uf->nreplacements;
	cur = malloc(len + 1);
	mc = pcre2_match_context_create(NULL);
	if (!cur || !mc) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	memcpy(cur, text, len);
	cur[len] = '\0';
	pcre2_set_match_limit(mc, RE_MATCH_LIMIT);
	pcre2_set_heap_limit(mc, RE_HEAP_LIMIT);
	for (size_t i = 0; i < uf->nreplacements; i++) {
		const struct mf_replacement *r = &uf->replacements[i];
		char what[64], why[MF_WHY_MAX];
		pcre2_code *re = NULL;
		int s;
		snprintf(what, sizeof(what), "replacements[%zu].pattern", i);
		if (mf_regex_compile(what, r->pattern, &re, why, sizeof(why))) {
			err_set(e, strcmp(why, "out of memory") ? ERR_INVALID : ERR_IO, "%s", why);
			goto out;
		}
		if (mf_expand_template(img, r->value, &value, e)) {
			pcre2_code_free(re);
			err_prefix(e, "replacements[%zu]", i);
			goto out;
		}
		s = substitute(re, mc, &cur, &curlen, value, &res->matches[i], what, e);
		pcre2_code_free(re);
		free(value);
		value = NULL;
		if (s)
			goto out;
	}
	res->changed = curlen != len || memcmp(cur, text, len) != 0;
	res->text = cur;
	res->len = curlen;
	cur = NULL;
	rc = 0;
out:
	free(cur);
	free(value);
	pcre2_match_context_free(mc);
	if (rc && uf->path)
		err_prefix(e, "updateFile %s", uf->path);
	return rc;
}
