/* labctl: the lab's image pipeline (CLI.md).  Dispatches to one file per
 * command. */
#include "common/err.h"
#include "common/log.h"
#include "store/s3/s3.h"
#include "sync/cli.h"
#include "sync/cmd_credentials.h"
#include "sync/commands.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

#ifndef IMGSTORE_VERSION
#define IMGSTORE_VERSION "unknown"
#endif

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct command image_cmds[] = {
        {"validate", cmd_validate, "check the manifest (and that every source URL answers)"},
        {"sync", cmd_sync, "download, verify, decompress and upload every image of the manifest"},
        {"list", cmd_list, "list the images in the bucket"},
        {"prune", cmd_prune, "delete images the manifest no longer names"},
        {"upload", cmd_upload, "upload one local file (e.g. Packer output) with its record"},
        {"overlay", cmd_overlay, "create qcow2 overlays on top of mounted bases"},
        {"index", cmd_index, "rebuild the record index (one GET lists every record)"},
        {NULL, NULL, NULL},
};

static void main_help(FILE *out)
{
	fprintf(out,
	        "Usage: labctl COMMAND [SUBCOMMAND] [OPTIONS]\n\n"
	        "The lab's VM image pipeline: a manifest of images, kept in an S3 bucket with\n"
	        "checksum records.\n\n"
	        "Commands:\n");
	for (const struct command *c = image_cmds; c->name; c++)
		fprintf(out, "  images %-10s %s\n", c->name, c->summary);
	fprintf(out,
	        "  credentials       manage the SOPS-encrypted bucket credentials\n\n"
	        "  --help            show this help;  --version  show the version\n\n"
	        "'labctl images SUBCOMMAND --help' describes each subcommand.\n"
	        "Bucket and credentials: E2_ENDPOINT, E2_BUCKET, E2_ACCESS_KEY, E2_SECRET_KEY,\n"
	        "E2_REGION, or --credentials FILE (SOPS).\n");
}

static void images_help(FILE *out)
{
	fprintf(out, "Usage: labctl images SUBCOMMAND [OPTIONS]\n\nSubcommands:\n");
	for (const struct command *c = image_cmds; c->name; c++)
		fprintf(out, "  %-10s %s\n", c->name, c->summary);
	fprintf(out, "\n'labctl images SUBCOMMAND --help' describes each one.\n");
}

static int is_help(const char *a)
{
	return !strcmp(a, "--help") || !strcmp(a, "-h") || !strcmp(a, "help");
}

static int images_main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "labctl images: missing subcommand (see 'labctl images --help')\n");
		return 2;
	}
	if (is_help(argv[1])) {
		images_help(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("labctl %s\n", IMGSTORE_VERSION);
		return 0;
	}
	for (const struct command *c = image_cmds; c->name; c++)
		if (!strcmp(argv[1], c->name))
			return c->fn(argc - 1, argv + 1);
	fprintf(stderr, "labctl images: unknown subcommand '%s' (see 'labctl images --help')\n",
	        argv[1]);
	return 2;
}

/* The global options before the command (labctl -v images sync ...): the
 * number of arguments they take, 0 when argv[i] is none, -1 on error (printed). */
static int global_opt(int argc, char **argv, int i)
{
	struct err e = {0};
	const char *a = argv[i], *v = NULL;
	int id, n = 1, g;
	if (!strcmp(a, "-v") || !strcmp(a, "--verbose"))
		id = 'v';
	else if (!strcmp(a, "-q") || !strcmp(a, "--quiet"))
		id = 'q';
	else if (!strncmp(a, "--log-level=", 12))
		id = CLI_OPT_LOG_LEVEL, v = a + 12;
	else if (!strcmp(a, "--log-level")) {
		id = CLI_OPT_LOG_LEVEL, n = 2;
		if (i + 1 >= argc) {
			fprintf(stderr, "labctl: option '--log-level' needs a value\n");
			return -1;
		}
		v = argv[i + 1];
	} else
		return 0;
	if ((g = cli_global_opt(id, v, &e)) < 0) {
		fprintf(stderr, "labctl: %s\n", e.msg);
		return -1;
	}
	return n;
}

int main(int argc, char **argv)
{
	struct err e = {0};
	int rc, n;
	log_init("labctl", LOG_LVL_INFO);
	while (argc > 1 && (n = global_opt(argc, argv, 1)) != 0) {
		if (n < 0)
			return 2;
		/* drop them: the command sees its own name as argv[1] */
		memmove(argv + 1, argv + 1 + n, (size_t)(argc - 1 - n + 1) * sizeof(*argv));
		argc -= n;
	}
	/* a peer closing a connection (or `labctl ... | head`) is an error to
	 * report, not a reason to die: libcurl runs with CURLOPT_NOSIGNAL */
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		main_help(stderr);
		return 2;
	}
	if (is_help(argv[1])) {
		main_help(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("labctl %s\n", IMGSTORE_VERSION);
		return 0;
	}
	if (s3_global_init(&e)) {
		fprintf(stderr, "labctl: %s\n", e.msg);
		return 1;
	}
	if (!strcmp(argv[1], "images"))
		rc = images_main(argc - 1, argv + 1);
	else if (!strcmp(argv[1], "credentials"))
		rc = cmd_credentials(argc - 1, argv + 1);
	else {
		fprintf(stderr, "labctl: unknown command '%s' (see 'labctl --help')\n", argv[1]);
		rc = 2;
	}
	s3_global_cleanup();
	return rc;
}
