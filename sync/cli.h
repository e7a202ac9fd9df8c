/* labctl command-line plumbing shared by every command: per-command option
 * tables for common/opt.h, the common flags of CLI.md, --help text, and
 * turning the common flags into an S3 configuration. */
#ifndef IMGSTORE_SYNC_CLI_H
#define IMGSTORE_SYNC_CLI_H

#include "common/err.h"
#include "common/opt.h"
#include "store/s3/s3.h"
#include "store/secrets/credentials.h"

#include <stdio.h>

/* labctl's names for the options several commands share: the credential
 * options of store/secrets/credentials.h, --manifest and -h/--help. */
enum { OPT_MANIFEST = 0x2000 };

#define CLI_OPT_CREDENTIALS       CRED_OPTDEF_CREDENTIALS
#define CLI_OPT_SOPS_AGE_KEY_FILE CRED_OPTDEF_AGE_KEY_FILE
#define CLI_OPT_CA_BUNDLE         CRED_OPTDEF_CA_BUNDLE
#define CLI_OPT_MANIFEST                                                                           \
	{                                                                                          \
		"manifest", OPT_MANIFEST, 1, "PATH",                                               \
		        "the image manifest (default: ./images/images.yaml)"                       \
	}
#define CLI_OPT_END OPT_DEF_END

/* Options every labctl command and subcommand takes (CLI.md "Both
 * programs"): --version, -v/--verbose, -q/--quiet, --log-level LEVEL.  A
 * parser adds the table and "vq" to its short options and hands these ids to
 * cli_global_opt first. */
enum { CLI_OPT_VERSION = 0x2100, CLI_OPT_LOG_LEVEL };
extern const struct optdef cli_global_opts[];
#define CLI_GLOBAL_SHORTS "vq"

/* 1: handled, stop (--version printed), 0: handled, -1: bad value (e set),
 * -2: not a global option. */
int cli_global_opt(int id, const char *value, struct err *e);

struct cmd_spec {
	const char *name;    /* "images upload" */
	const char *usage;   /* the synopsis after the name */
	const char *summary; /* one paragraph */
	const struct optdef *opts;
};

struct common_opts {
	struct cred_opts cred; /* --credentials, --sops-age-key-file, --ca-bundle */
	const char *manifest;
};

/* Parse argv[1..argc) (argv[0] is the command name): the options of
 * spec->opts and -h/--help, no other arguments; fn(ud, ...) gets the
 * command's own options.  Returns 0 when parsed, 1 when --help was printed
 * (the command exits 0), -1 with ERR_USAGE set. */
int cli_parse(const struct cmd_spec *spec, int argc, char **argv, struct common_opts *common,
              opt_fn fn, void *ud, struct err *e);
void cli_help(const struct cmd_spec *spec, FILE *out);

/* Print "labctl: <msg>" for a failed command and return its exit code. */
int cli_fail(const struct err *e);

/* The bucket configuration from the common flags (CLI.md order: E2_*
 * environment first, then --credentials).  Free with s3_config_free. */
int cli_s3_config(const struct common_opts *c, struct s3_config *cfg, struct err *e);

/* An extra CA file to trust for HTTPS sources (NULL when none). */
const char *cli_ca_bundle(const struct common_opts *c);

struct manifest;
/* Load and validate --manifest (default images/images.yaml).  An invalid
 * manifest prints every problem to stderr and fails with ERR_INVALID; a
 * missing one fails with ERR_USAGE. */
int cli_load_manifest(const struct common_opts *c, struct manifest **m, struct err *e);
struct mf_problems;
/* Every problem on stderr, and as ::error annotations with GITHUB_ACTIONS=true. */
void cli_report_problems(const struct mf_problems *probs);
/* e after a failed manifest_load of path, in labctl's words (ERR_INVALID
 * names the count, a missing file becomes a usage error); returns e. */
struct err *cli_manifest_error(struct err *e, const char *path, size_t nproblems);
const char *cli_manifest_path(const struct common_opts *c);

/* Parse a positive integer flag value in [min, max]. */
int cli_parse_int(const char *flag, const char *value, long min, long max, long *out,
                  struct err *e);

#endif
