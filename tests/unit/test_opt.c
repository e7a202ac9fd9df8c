/* common/opt: the option parser labctl and imgfs share (rules and messages). */
#include "check.h"
#include "common/opt.h"

#include <stdio.h>
#include <string.h>

enum { O_NAME = 1, O_FLAG, O_NOMETA };

static const struct optdef table[] = {
        {"name", O_NAME, 1, "NAME", "a value"},
        {"name-long", O_NAME + 100, 1, "X", "shares a prefix with --name"},
        {"flag", O_FLAG, 0, NULL, "no value"},
        {"nometa", O_NOMETA, 1, NULL, "a value without a metavar"},
        {"foreground", 'f', 0, NULL, "the same as -f"},
        OPT_DEF_HELP,
        OPT_DEF_END,
};

/* What the handlers saw, as text: "name=v flag f o=x arg:a ". */
static char seen[512];

static int on_opt(void *ud, int id, const char *v, struct err *e)
{
	size_t n = strlen(seen);
	(void)ud;
	if (id == 'h')
		return 1;
	if (v && !strcmp(v, "bad"))
		return err_set(e, ERR_USAGE, "--%d: 'bad' is bad", id);
	snprintf(seen + n, sizeof(seen) - n, "%d%s%s ", id, v ? "=" : "", v ? v : "");
	return 0;
}

static int on_arg(void *ud, const char *a, struct err *e)
{
	size_t n = strlen(seen);
	(void)ud;
	(void)e;
	snprintf(seen + n, sizeof(seen) - n, "arg:%s ", a);
	return 0;
}

/* Parse a space-separated command line (argv[0] = "prog"). */
static int parse(const char *line, int with_args, struct err *e)
{
	const struct optdef *const tables[] = {table, NULL};
	const struct opt_parser p = {tables, "fo:h", on_opt, with_args ? on_arg : NULL, NULL};
	char buf[512], *argv[32], *save = NULL;
	int argc = 0;
	snprintf(buf, sizeof(buf), "prog %s", line);
	for (char *t = strtok_r(buf, " ", &save); t && argc < 31; t = strtok_r(NULL, " ", &save))
		argv[argc++] = strcmp(t, "''") ? t : (char *)"";
	argv[argc] = NULL;
	seen[0] = '\0';
	err_clear(e);
	return opt_parse(&p, argc, argv, e);
}

static void test_accepted(void)
{
	struct err e;
	CHECK(parse("--name a --name=b --flag --nometa c", 0, &e) == 0);
	CHECK_STR(seen, "1=a 1=b 2 3=c ");
	/* a value may look like an option */
	CHECK(parse("--name --flag --name -", 0, &e) == 0);
	CHECK_STR(seen, "1=--flag 1=- ");
	/* an exact name wins over a longer one that shares its prefix */
	CHECK(parse("--name-long x --name y", 0, &e) == 0);
	CHECK_STR(seen, "101=x 1=y ");
	/* short options, clustered, with attached or separate values; a long
	 * option may share a short one's id */
	CHECK(parse("-f -ox -o y -fo z --foreground", 0, &e) == 0);
	CHECK_STR(seen, "102 111=x 111=y 102 111=z 102 ");
	/* arguments in the order given, also after "--" */
	CHECK(parse("a --flag b -- --name -f", 1, &e) == 0);
	CHECK_STR(seen, "arg:a 2 arg:b arg:--name arg:-f ");
	CHECK(parse("- --flag", 1, &e) == 0);
	CHECK_STR(seen, "arg:- 2 ");
	CHECK(parse("", 0, &e) == 0);
	CHECK_STR(seen, "");
}

static void test_refused(void)
{
	struct err e;
	CHECK(parse("--nope", 0, &e) == -1 && e.code == ERR_USAGE);
	CHECK_STR(e.msg, "unknown option '--nope'");
	CHECK(parse("--nope=1", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '--nope'");
	/* no abbreviations, unambiguous or not */
	CHECK(parse("--fla", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '--fla'");
	CHECK(parse("--fore=1", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '--fore'");
	CHECK(parse("--na x", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '--na'");
	CHECK(parse("--nomet", 0, &e) == -1); /* missing value, but unknown first */
	CHECK_STR(e.msg, "unknown option '--nomet'");
	CHECK(parse("-x", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '-x'");
	CHECK(parse("-fx", 0, &e) == -1);
	CHECK_STR(e.msg, "unknown option '-x'");
	CHECK(parse("--flag=1", 0, &e) == -1);
	CHECK_STR(e.msg, "option '--flag' takes no value");
	CHECK(parse("--flag --name", 0, &e) == -1);
	CHECK_STR(e.msg, "option '--name' needs a value (NAME)");
	CHECK(parse("--nometa", 0, &e) == -1);
	CHECK_STR(e.msg, "option '--nometa' needs a value");
	CHECK(parse("-o", 0, &e) == -1);
	CHECK_STR(e.msg, "option '-o' needs a value");
	CHECK(parse("--name=", 0, &e) == -1);
	CHECK_STR(e.msg, "option '--name' needs a non-empty value");
	CHECK(parse("--name ''", 0, &e) == -1);
	CHECK_STR(e.msg, "option '--name' needs a non-empty value");
	CHECK(parse("-o ''", 0, &e) == -1);
	CHECK_STR(e.msg, "option '-o' needs a non-empty value");
	/* without an argument handler, no argument is allowed */
	CHECK(parse("--flag extra", 0, &e) == -1);
	CHECK_STR(e.msg, "unexpected argument 'extra'");
	CHECK(parse("-- extra", 0, &e) == -1);
	CHECK_STR(e.msg, "unexpected argument 'extra'");
	/* a handler's own error comes through as it is */
	CHECK(parse("--flag --name bad --flag", 0, &e) == -1);
	CHECK_STR(e.msg, "--1: 'bad' is bad");
	CHECK_STR(seen, "2 ");
}

static void test_stop(void)
{
	struct err e;
	/* --help stops: what follows is not looked at */
	CHECK(parse("--flag --help --nope", 0, &e) == 1);
	CHECK_STR(seen, "2 ");
	CHECK(parse("-h extra", 0, &e) == 1);
	/* but what comes before it is */
	CHECK(parse("--nope --help", 0, &e) == -1);
	/* a second parse starts afresh */
	CHECK(parse("--flag", 0, &e) == 0);
	CHECK_STR(seen, "2 ");
}

static void test_find(void)
{
	const struct optdef *const tables[] = {table, NULL};
	const struct optdef *o = opt_find(tables, "nometa");
	CHECK(o && o->id == O_NOMETA && o->has_arg);
	CHECK(opt_find(tables, "foreground") && opt_find(tables, "foreground")->id == 'f');
	CHECK(opt_find(tables, "nomet") == NULL && opt_find(tables, "--flag") == NULL);
}

int main(void)
{
	test_accepted();
	test_refused();
	test_stop();
	test_find();
	return check_report("opt");
}
