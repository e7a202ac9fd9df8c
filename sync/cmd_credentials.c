/* labctl credentials encrypt|check.  See cmd_credentials.h. */
#include "sync/cmd_credentials.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/file.h"
#include "common/opt.h"
#include "store/secrets/credentials.h"
#include "store/secrets/sops.h"
#include "store/secrets/sops_config.h"
#include "sync/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PLAIN_MAX (1u << 20)
#define MAX_RCPT  64

static void help_main(FILE *out)
{
	fprintf(out, "Usage: labctl credentials SUBCOMMAND [OPTIONS]\n\n"
	             "SOPS-encrypted bucket credentials (a YAML file with access_key, secret_key,\n"
	             "endpoint, bucket and optional region), readable by sops and by imgstore.\n\n"
	             "Subcommands:\n"
	             "  encrypt    encrypt a plaintext YAML for age recipients and/or PGP keys\n"
	             "  check      decrypt a credentials file and show which fields it has\n\n"
	             "'labctl credentials SUBCOMMAND --help' describes each one.\n");
}

static void help_encrypt(FILE *out)
{
	fprintf(out,
	        "Usage: labctl credentials encrypt --age RECIPIENT [--age RECIPIENT]... [--pgp "
	        "FPR]...\n"
	        "                                  [--in PLAIN.yaml|-] --out FILE|-\n\n"
	        "Encrypt a plaintext YAML map (for example:\n"
	        "    endpoint: https://s3.example.com\n"
	        "    bucket: lab-images\n"
	        "    access_key: ...\n"
	        "    secret_key: ...\n"
	        "    region: us-east-1\n"
	        ") into a SOPS file (sops " SOPS_VERSION
	        " format, AES-256-GCM, MAC) that sops, labctl and\n"
	        "imgfs can decrypt.  Keys ending in _unencrypted stay in the clear; comments in\n"
	        "the plaintext are not carried over.\n\n"
	        "Options:\n"
	        "  --age RECIPIENT   an age X25519 recipient (age1..., from age-keygen); repeat "
	        "or\n"
	        "                    separate with commas (default: $SOPS_AGE_RECIPIENTS, then\n"
	        "                    the first creation rule of the nearest .sops.yaml above\n"
	        "                    --out whose path_regex matches it: its age, pgp and\n"
	        "                    encrypted_regex)\n"
	        "  --pgp FPR         a PGP key fingerprint (40 hex digits) in your gpg keyring;\n"
	        "                    repeatable (default: $SOPS_PGP_FP)\n"
	        "  --in PATH         the plaintext YAML; '-' (the default) reads standard input\n"
	        "  --out PATH        where to write the encrypted file; '-' writes standard "
	        "output\n"
	        "  --help            show this help\n\n"
	        "The plaintext is only held in memory; nothing secret is printed.\n");
}

static void help_check(FILE *out)
{
	fprintf(out,
	        "Usage: labctl credentials check [--credentials FILE] [--sops-age-key-file "
	        "PATH]\n"
	        "                                [--endpoint URL] [--bucket NAME]\n\n"
	        "Decrypt and verify (MAC) a SOPS credentials file and show which fields it has,\n"
	        "the endpoint and the bucket (never the keys), then the settings labctl would\n"
	        "use after --endpoint, --bucket and the E2_* environment.  Without "
	        "--credentials,\n"
	        "checks the command line and the environment.\n\n"
	        "Options:\n"
	        "  --credentials PATH        the SOPS-encrypted YAML\n"
	        "  --sops-age-key-file PATH  age identity file (default: $SOPS_AGE_KEY_FILE, then\n"
	        "                            ~/.config/sops/age/keys.txt); PGP entries use gpg\n"
	        "  --endpoint URL            the S3 endpoint, as the other commands take it\n"
	        "  --bucket NAME             the bucket, as the other commands take it\n"
	        "  --help                    show this help\n\n"
	        "Exit status: 0 complete and verified; 1 no key could open the file; 2 the file "
	        "is\n"
	        "invalid or tampered with, or a required field is missing.\n");
}

static int fail(const char *sub, const struct err *e)
{
	fprintf(stderr, "labctl credentials %s: %s\n", sub, e->msg);
	return err_exit_code(e);
}

static int usage(const char *sub, const char *msg)
{
	fprintf(stderr, "labctl credentials %s: %s (see 'labctl credentials %s --help')\n", sub,
	        msg, sub);
	return 2;
}

static int add_list(char **v, size_t *n, char *arg)
{
	char *save = NULL, *tok;
	for (tok = strtok_r(arg, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		if (*n >= MAX_RCPT)
			return -1;
		v[(*n)++] = tok;
	}
	return 0;
}

/* Write atomically: a temporary file next to path, then rename. */
static int write_output(const char *path, const struct buf *b, struct err *e)
{
	mode_t um;
	if (!strcmp(path, "-")) {
		if (fwrite(b->data, 1, b->len, stdout) != b->len || fflush(stdout))
			return err_errno(e, "writing standard output");
		return 0;
	}
	um = umask(0);
	umask(um);
	return file_write_atomic(path, b->data, b->len, 0666 & ~um, e);
}

/* The options; their help is help_encrypt's text. */
enum { OPT_AGE = 1, OPT_PGP, OPT_IN, OPT_OUT };

static const struct optdef encrypt_opts[] = {
        {"age", OPT_AGE, 1, "RECIPIENT", NULL},
        {"pgp", OPT_PGP, 1, "FPR", NULL},
        {"in", OPT_IN, 1, "PATH", NULL},
        {"out", OPT_OUT, 1, "PATH", NULL},
        OPT_DEF_HELP,
        OPT_DEF_END,
};

struct encrypt_args {
	char *ages[MAX_RCPT], *pgps[MAX_RCPT];
	size_t nage, npgp;
	const char *in, *out;
};

static int encrypt_opt(void *ud, int id, const char *v, struct err *e)
{
	struct encrypt_args *a = ud;
	int g = cli_global_opt(id, v, e);
	if (g != -2)
		return g;
	switch (id) {
	/* v points into argv, which add_list may cut into pieces */
	case OPT_AGE:
		if (add_list(a->ages, &a->nage, (char *)v))
			return err_set(e, ERR_USAGE, "too many --age recipients");
		return 0;
	case OPT_PGP:
		if (add_list(a->pgps, &a->npgp, (char *)v))
			return err_set(e, ERR_USAGE, "too many --pgp keys");
		return 0;
	case OPT_IN: a->in = v; return 0;
	case OPT_OUT: a->out = v; return 0;
	case 'h': help_encrypt(stdout); return 1;
	}
	return err_set(e, ERR_USAGE, "unknown option");
}

static int cmd_encrypt(int argc, char **argv)
{
	const struct optdef *const tables[] = {encrypt_opts, cli_global_opts, NULL};
	struct encrypt_args a = {.in = "-"};
	const struct opt_parser p = {tables, "h" CLI_GLOBAL_SHORTS, encrypt_opt, NULL, &a};
	char *envdup[2] = {NULL, NULL};
	struct sops_encrypt_opts o;
	struct sops_creation_rule rule = {0};
	struct buf plain = BUF_INIT, enc = BUF_INIT;
	struct err e = {0};
	int rc = 2;
	switch (opt_parse(&p, argc, argv, &e)) {
	case 0: break;
	case 1: return 0;
	default: return usage("encrypt", e.msg);
	}
	if (!a.out)
		return usage("encrypt", "--out FILE is required");
	if (!a.nage && !a.npgp) {
		const char *ea = getenv("SOPS_AGE_RECIPIENTS"), *ep = getenv("SOPS_PGP_FP");
		if (ea && *ea && (envdup[0] = strdup(ea)))
			add_list(a.ages, &a.nage, envdup[0]);
		if (ep && *ep && (envdup[1] = strdup(ep)))
			add_list(a.pgps, &a.npgp, envdup[1]);
	}
	if (!a.nage && !a.npgp) {
		/* like sops: the creation rules of the nearest .sops.yaml */
		char *d = strdup(strcmp(a.out, "-") ? a.out : "./-");
		int found = d && !sops_creation_rule_find(dirname(d), a.out, &rule, &e);
		free(d);
		if (!found && e.code != ERR_NOTFOUND)
			goto fail;
		if (!found) {
			rc = usage("encrypt",
			           "no recipient: give --age RECIPIENT (age-keygen prints "
			           "one) and/or --pgp FINGERPRINT, or a creation rule in "
			           ".sops.yaml");
			goto done;
		}
		for (size_t i = 0; i < rule.nage; i++)
			a.ages[a.nage++] = rule.age[i];
		for (size_t i = 0; i < rule.npgp; i++)
			a.pgps[a.npgp++] = rule.pgp[i];
		fprintf(stderr,
		        "labctl credentials encrypt: recipients%s from the creation rule of %s\n",
		        rule.encrypted_regex ? " and encrypted_regex" : "", rule.config);
	}
	if (file_read_all(a.in, PLAIN_MAX, &plain, &e))
		goto fail;
	memset(&o, 0, sizeof(o));
	o.age = (const char *const *)a.ages;
	o.nage = a.nage;
	o.pgp = (const char *const *)a.pgps;
	o.npgp = a.npgp;
	o.encrypted_regex = rule.encrypted_regex;
	if (sops_encrypt(plain.data ? plain.data : "", plain.len,
	                 strcmp(a.in, "-") ? a.in : "stdin", &o, &enc, &e))
		goto fail;
	if (write_output(a.out, &enc, &e))
		goto fail;
	if (strcmp(a.out, "-"))
		fprintf(stderr,
		        "labctl credentials encrypt: wrote %s (for %zu age recipient%s, %zu PGP "
		        "key%s)\n",
		        a.out, a.nage, a.nage == 1 ? "" : "s", a.npgp, a.npgp == 1 ? "" : "s");
	rc = 0;
	goto done;
fail:
	rc = fail("encrypt", &e);
done:
	buf_free_secure(&plain);
	buf_free(&enc);
	sops_creation_rule_free(&rule);
	free(envdup[0]);
	free(envdup[1]);
	return rc;
}

static void show(const char *name, const char *v, int secret)
{
	if (!v)
		printf("  %-11s missing\n", name);
	else if (secret)
		printf("  %-11s present\n", name);
	else
		printf("  %-11s %s\n", name, v);
}

static const struct optdef check_opts[] = {
        CRED_OPTDEF_CREDENTIALS,
        CRED_OPTDEF_AGE_KEY_FILE,
        CRED_OPTDEF_ENDPOINT,
        CRED_OPTDEF_BUCKET,
        OPT_DEF_HELP,
        OPT_DEF_END,
};

static int check_opt(void *ud, int id, const char *v, struct err *e)
{
	int g = cli_global_opt(id, v, e);
	if (g != -2)
		return g;
	if (cred_opt_set(ud, id, v))
		return 0;
	if (id == 'h') {
		help_check(stdout);
		return 1;
	}
	return err_set(e, ERR_USAGE, "unknown option");
}

static int cmd_check(int argc, char **argv)
{
	const struct optdef *const tables[] = {check_opts, cli_global_opts, NULL};
	struct cred_opts co = {0};
	const struct opt_parser p = {tables, "h" CLI_GLOBAL_SHORTS, check_opt, NULL, &co};
	const char *path, *keyfile;
	struct cred_file cf;
	struct s3_config cfg;
	struct err e = {0};
	size_t i;
	int rc;
	switch (opt_parse(&p, argc, argv, &e)) {
	case 0: break;
	case 1: return 0;
	default: return usage("check", e.msg);
	}
	path = co.credentials_path;
	keyfile = co.age_key_file;
	if (path) {
		if (credentials_load_file(path, keyfile, &cf, &e))
			return fail("check", &e);
		printf("credentials file: %s\n", path);
		if (!strncmp(cf.key_source, "age:", 4))
			printf("  opened with age recipient %s (identities: %s)\n",
			       cf.key_source + 4,
			       cf.age_key_file[0] ? cf.age_key_file : "SOPS_AGE_KEY");
		else
			printf("  opened with PGP key %s (gpg)\n", cf.key_source + 4);
		printf("  MAC verified\n");
		show("endpoint:", cf.endpoint, 0);
		show("bucket:", cf.bucket, 0);
		show("access_key:", cf.access_key, 1);
		show("secret_key:", cf.secret_key, 1);
		if (cf.region)
			show("region:", cf.region, 0);
		else
			printf("  %-11s (not set: us-east-1)\n", "region:");
	}
	/* each setting from the first of: its flag, its variable, the file */
	const struct {
		const char *env, *flag, *given;
	} order[] = {{"E2_ENDPOINT", "--endpoint", co.endpoint},
	             {"E2_BUCKET", "--bucket", co.bucket},
	             {"E2_ACCESS_KEY", NULL, NULL},
	             {"E2_SECRET_KEY", NULL, NULL},
	             {"E2_REGION", NULL, NULL}};
	for (i = 0; i < sizeof(order) / sizeof(*order); i++)
		if (order[i].given)
			printf("note: %s is given and takes precedence over %s%s\n", order[i].flag,
			       order[i].env, path ? " and the file" : "");
	for (i = 0; i < sizeof(order) / sizeof(*order); i++) {
		const char *v = getenv(order[i].env);
		if (v && *v && !order[i].given)
			printf("note: %s is set in the environment and takes precedence%s\n",
			       order[i].env, path ? " over the file" : "");
	}
	rc = credentials_merge(&co, path ? &cf : NULL, &cfg, &e);
	if (path)
		credentials_file_free(&cf);
	if (rc)
		return fail("check", &e);
	printf("effective settings:\n");
	show("endpoint:", cfg.endpoint, 0);
	show("bucket:", cfg.bucket, 0);
	show("access_key:", cfg.access_key, 1);
	show("secret_key:", cfg.secret_key, 1);
	show("region:", cfg.region, 0);
	credentials_config_clear(&cfg);
	fflush(stdout);
	return 0;
}

int cmd_credentials(int argc, char **argv)
{
	if (argc < 2) {
		help_main(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		help_main(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version"))
		return cli_global_opt(CLI_OPT_VERSION, NULL, NULL) == 1 ? 0 : 1;
	if (!strcmp(argv[1], "encrypt"))
		return cmd_encrypt(argc - 1, argv + 1);
	if (!strcmp(argv[1], "check"))
		return cmd_check(argc - 1, argv + 1);
	fprintf(stderr,
	        "labctl credentials: unknown subcommand '%s' (see 'labctl credentials --help')\n",
	        argv[1]);
	return 2;
}
