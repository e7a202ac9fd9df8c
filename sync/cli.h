/* labctl command-line plumbing shared by every command: a small long-option
 * parser with per-command tables, the common flags of CLI.md, --help text,
 * and turning the common flags into an S3 configuration. */
#ifndef IMGSTORE_SYNC_CLI_H
#define IMGSTORE_SYNC_CLI_H

#include "common/err.h"
#include "store/s3/s3.h"

#include <stdio.h>

/* Ids of the flags every command may share; command-specific ids start at 1. */
enum {
	OPT_HELP = 1000,
	OPT_CREDENTIALS,
	OPT_SOPS_AGE_KEY_FILE,
	OPT_CA_BUNDLE,
	OPT_MANIFEST,
};

struct optdef {
	const char *name; /* without the leading "--" */
	int id;
	int has_arg;
	const char *metavar; /* shown in --help when has_arg */
	const char *help;
};

#define CLI_OPT_CREDENTIALS                                                                        \
	{                                                                                          \
		"credentials", OPT_CREDENTIALS, 1, "PATH",                                         \
		        "SOPS-encrypted YAML with the bucket credentials (used when the E2_* "     \
		        "variables are not set)"                                                   \
	}
#define CLI_OPT_SOPS_AGE_KEY_FILE                                                                  \
	{                                                                                          \
		"sops-age-key-file", OPT_SOPS_AGE_KEY_FILE, 1, "PATH",                             \
		        "age identity file for --credentials (default: $SOPS_AGE_KEY_FILE)"        \
	}
#define CLI_OPT_CA_BUNDLE                                                                          \
	{                                                                                          \
		"ca-bundle", OPT_CA_BUNDLE, 1, "FILE",                                             \
		        "an extra CA certificate file to trust (S3 endpoint and HTTPS sources)"    \
	}
#define CLI_OPT_MANIFEST                                                                           \
	{                                                                                          \
		"manifest", OPT_MANIFEST, 1, "PATH",                                               \
		        "the image manifest (default: ./images/images.yaml)"                       \
	}
#define CLI_OPT_END                                                                                \
	{                                                                                          \
		NULL, 0, 0, NULL, NULL                                                             \
	}

struct cmd_spec {
	const char *name;    /* "images upload" */
	const char *usage;   /* the synopsis after the name */
	const char *summary; /* one paragraph */
	const struct optdef *opts;
};

struct common_opts {
	const char *credentials;
	const char *sops_age_key_file;
	const char *ca_bundle;
	const char *manifest;
};

/* Handler for a command's own flags (value NULL for flags without argument). */
typedef int (*cli_opt_fn)(void *ud, int id, const char *value, struct err *e);

/* Parse argv[1..argc) (argv[0] is the command name).  Returns 0 when parsed,
 * 1 when --help was printed (the command exits 0), -1 with ERR_USAGE set. */
int cli_parse(const struct cmd_spec *spec, int argc, char **argv, struct common_opts *common,
              cli_opt_fn fn, void *ud, struct err *e);
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
const char *cli_manifest_path(const struct common_opts *c);

/* Parse a positive integer flag value in [min, max]. */
int cli_parse_int(const char *flag, const char *value, long min, long max, long *out,
                  struct err *e);

#endif
