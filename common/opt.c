/* Command-line options on getopt_long.  See opt.h. */
#include "common/opt.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* getopt_long's value for the long option at index i: LONG_BASE + i, apart
 * from every letter, from 1 (an argument in order) and from '?' and ':'. */
#define LONG_BASE 256

const struct optdef *opt_find(const struct optdef *const *tables, const char *name)
{
	for (; *tables; tables++)
		for (const struct optdef *o = *tables; o->name; o++)
			if (!strcmp(o->name, name))
				return o;
	return NULL;
}

static int no_arg(void *ud, const char *arg, struct err *e)
{
	(void)ud;
	return err_set(e, ERR_USAGE, "unexpected argument '%.200s'", arg);
}

int opt_parse(const struct opt_parser *p, int argc, char **argv, struct err *e)
{
	opt_arg_fn arg = p->arg ? p->arg : no_arg;
	const struct optdef **defs = NULL;
	struct option *lo = NULL;
	char *shorts = NULL;
	size_t n = 0, k = 0;
	int rc = -1;

	for (const struct optdef *const *t = p->tables; *t; t++)
		for (const struct optdef *o = *t; o->name; o++)
			n++;
	lo = calloc(n + 1, sizeof(*lo));
	defs = calloc(n + 1, sizeof(*defs));
	/* '-': arguments come back in order (as 1), nothing is permuted, so
	 * the token getopt just read is argv[optind before the call];
	 * ':': a missing value is told apart from an unknown option */
	if (!lo || !defs || asprintf(&shorts, "-:%s", p->shorts ? p->shorts : "") < 0) {
		shorts = NULL;
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (const struct optdef *const *t = p->tables; *t; t++)
		for (const struct optdef *o = *t; o->name; o++, k++) {
			lo[k] = (struct option){o->name,
			                        o->has_arg ? required_argument : no_argument, NULL,
			                        LONG_BASE + (int)k};
			defs[k] = o;
		}

	opterr = 0;
	optind = 0; /* glibc: start afresh */
	for (;;) {
		int at = optind ? optind : 1, c, r, lv;
		const struct optdef *d = NULL;
		const char *tok, *value;
		c = getopt_long(argc, argv, shorts, lo, NULL);
		if (c == -1)
			break;
		if (c == 1) {
			if (arg(p->ud, optarg, e))
				goto out;
			continue;
		}
		tok = argv[at];
		lv = c == '?' || c == ':' ? optopt : c;
		/* a long option: typed in full, or unknown */
		if (lv >= LONG_BASE || (c == '?' && lv == 0)) {
			size_t len = strcspn(tok + 2, "=");
			d = lv >= LONG_BASE ? defs[lv - LONG_BASE] : NULL;
			if (!d || strlen(d->name) != len || strncmp(d->name, tok + 2, len)) {
				err_set(e, ERR_USAGE, "unknown option '--%.*s'",
				        (int)(len > 200 ? 200 : len), tok + 2);
				goto out;
			}
		}
		if (c == '?') {
			if (d)
				err_set(e, ERR_USAGE, "option '--%s' takes no value", d->name);
			else
				err_set(e, ERR_USAGE, "unknown option '-%c'", lv);
			goto out;
		}
		if (c == ':') {
			if (d && d->metavar)
				err_set(e, ERR_USAGE, "option '--%s' needs a value (%s)", d->name,
				        d->metavar);
			else if (d)
				err_set(e, ERR_USAGE, "option '--%s' needs a value", d->name);
			else
				err_set(e, ERR_USAGE, "option '-%c' needs a value", lv);
			goto out;
		}
		value = optarg;
		if (value && !*value) {
			if (d)
				err_set(e, ERR_USAGE, "option '--%s' needs a non-empty value",
				        d->name);
			else
				err_set(e, ERR_USAGE, "option '-%c' needs a non-empty value", c);
			goto out;
		}
		r = p->fn(p->ud, d ? d->id : c, value, e);
		if (r) {
			rc = r > 0 ? 1 : -1;
			goto out;
		}
	}
	/* what follows "--" */
	for (; optind < argc; optind++)
		if (arg(p->ud, argv[optind], e))
			goto out;
	rc = 0;
out:
	free(lo);
	free(defs);
	free(shorts);
	return rc;
}
