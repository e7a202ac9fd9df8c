/* Command-line options for labctl and imgfs: getopt_long driven by tables
 * of long options, with one set of rules and messages for both programs.
 *
 * Rules: long options are spelled out in full (no abbreviations, so adding an
 * option never changes what an existing command line means); a value follows
 * as "--name VALUE" or "--name=VALUE" and must not be empty; "--" ends the
 * options.  Arguments that are not options reach the argument handler in the
 * order given.  Errors are ERR_USAGE with messages such as
 * "unknown option '--x'", which each program wraps in its own usage hint.
 *
 * A table is data: a parser of another syntax (imgfs's `-o name=value`) can
 * look an option up by name with opt_find and call the same handler. */
#ifndef IMGSTORE_COMMON_OPT_H
#define IMGSTORE_COMMON_OPT_H

#include "common/err.h"

struct optdef {
	const char *name; /* without the leading "--"; NULL ends a table */
	int id;           /* what the handler gets; a short option's id is its letter */
	int has_arg;
	const char *metavar; /* shown in help and errors when has_arg */
	const char *help;
};

#define OPT_DEF_HELP                                                                               \
	{                                                                                          \
		"help", 'h', 0, NULL, "show this help and exit"                                    \
	}
#define OPT_DEF_END                                                                                \
	{                                                                                          \
		NULL, 0, 0, NULL, NULL                                                             \
	}

/* One option (value NULL when it takes none): 0 to go on, 1 to stop
 * parsing (e.g. after printing --help), -1 with e set. */
typedef int (*opt_fn)(void *ud, int id, const char *value, struct err *e);
/* One argument that is not an option: 0 or -1 with e set. */
typedef int (*opt_arg_fn)(void *ud, const char *arg, struct err *e);

struct opt_parser {
	const struct optdef *const *tables; /* NULL-terminated */
	const char *shorts; /* short options in getopt's syntax ("fo:h"); id = the letter */
	opt_fn fn;
	opt_arg_fn arg; /* NULL: no such argument is allowed ("unexpected argument 'x'") */
	void *ud;
};

/* Parse argv[1..argc).  0 when parsed, 1 when a handler stopped, -1 with e
 * set (ERR_USAGE from the parser, or what a handler set). */
int opt_parse(const struct opt_parser *p, int argc, char **argv, struct err *e);

/* The option called `name` (no dashes) in tables, or NULL. */
const struct optdef *opt_find(const struct optdef *const *tables, const char *name);

#endif
