/* labctl credentials encrypt|check.  See cmd_credentials.h. */
#include "sync/cmd_credentials.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/file.h"
#include "store/secrets/credentials.h"
#include "store/secrets/sops.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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
	        "                    separate with commas (default: $SOPS_AGE_RECIPIENTS)\n"
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
	        "PATH]\n\n"
	        "Decrypt and verify (MAC) a SOPS credentials file and show which fields it has,\n"
	        "the endpoint and the bucket (never the keys), then the settings labctl would\n"
	        "use after the E2_* environment.  Without --credentials, checks the "
	        "environment.\n\n"
	        "Options:\n"
	        "  --credentials PATH        the SOPS-encrypted YAML\n"
	        "  --sops-age-key-file PATH  age identity file (default: $SOPS_AGE_KEY_FILE, then\n"
	        "                            ~/.config/sops/age/keys.txt); PGP entries use gpg\n"
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

static int cmd_encrypt(int argc, char **argv)
{
	static const struct option opts[] = {
	        {"age", required_argument, NULL, 'a'}, {"pgp", required_argument, NULL, 'p'},
	        {"in", required_argument, NULL, 'i'},  {"out", required_argument, NULL, 'o'},
	        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0}};
	char *ages[MAX_RCPT], *pgps[MAX_RCPT], *envdup[2] = {NULL, NULL};
	size_t nage = 0, npgp = 0;
	const char *in = "-", *out = NULL;
	struct sops_encrypt_opts o;
	struct buf plain = BUF_INIT, enc = BUF_INIT;
	struct err e = {0};
	int c, rc = 2;
	opterr = 0;
	optind = 0;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			if (add_list(ages, &nage, optarg))
				return usage("encrypt", "too many --age recipients");
			break;
		case 'p':
			if (add_list(pgps, &npgp, optarg))
				return usage("encrypt", "too many --pgp keys");
			break;
		case 'i': in = optarg; break;
		case 'o': out = optarg; break;
		case 'h': help_encrypt(stdout); return 0;
		case ':': return usage("encrypt", "an option is missing its value");
		default: return usage("encrypt", "unknown option");
		}
	}
	if (optind < argc)
		return usage("encrypt", "unexpected argument");
	if (!out)
		return usage("encrypt", "--out FILE is required");
	if (!nage && !npgp) {
		const char *ea = getenv("SOPS_AGE_RECIPIENTS"), *ep = getenv("SOPS_PGP_FP");
		if (ea && *ea && (envdup[0] = strdup(ea)))
			add_list(ages, &nage, envdup[0]);
		if (ep && *ep && (envdup[1] = strdup(ep)))
			add_list(pgps, &npgp, envdup[1]);
	}
	if (!nage && !npgp) {
		rc = usage("encrypt", "no recipient: give --age RECIPIENT (age-keygen prints one) "
		                      "and/or --pgp FINGERPRINT");
		goto done;
	}
	if (file_read_all(in, PLAIN_MAX, &plain, &e))
		goto fail;
	memset(&o, 0, sizeof(o));
	o.age = (const char *const *)ages;
	o.nage = nage;
	o.pgp = (const char *const *)pgps;
	o.npgp = npgp;
	if (sops_encrypt(plain.data ? plain.data : "", plain.len, strcmp(in, "-") ? in : "stdin",
	                 &o, &enc, &e))
		goto fail;
	if (write_output(out, &enc, &e))
		goto fail;
	if (strcmp(out, "-"))
		fprintf(stderr,
		        "labctl credentials encrypt: wrote %s (for %zu age recipient%s, %zu PGP "
		        "key%s)\n",
		        out, nage, nage == 1 ? "" : "s", npgp, npgp == 1 ? "" : "s");
	rc = 0;
	goto done;
fail:
	rc = fail("encrypt", &e);
done:
	buf_free_secure(&plain);
	buf_free(&enc);
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

static int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {{"credentials", required_argument, NULL, 'c'},
	                                     {"sops-age-key-file", required_argument, NULL, 'k'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	static const char *const envs[] = {"E2_ENDPOINT", "E2_BUCKET", "E2_ACCESS_KEY",
	                                   "E2_SECRET_KEY", "E2_REGION"};
	const char *path = NULL, *keyfile = NULL;
	struct cred_opts co;
	struct cred_file cf;
	struct s3_config cfg;
	struct err e = {0};
	size_t i;
	int c, rc;
	opterr = 0;
	optind = 0;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'k': keyfile = optarg; break;
		case 'h': help_check(stdout); return 0;
		case ':': return usage("check", "an option is missing its value");
		default: return usage("check", "unknown option");
		}
	}
	if (optind < argc)
		return usage("check", "unexpected argument");
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
	for (i = 0; i < sizeof(envs) / sizeof(*envs); i++) {
		const char *v = getenv(envs[i]);
		if (v && *v)
			printf("note: %s is set in the environment and takes precedence%s\n",
			       envs[i], path ? " over the file" : "");
	}
	memset(&co, 0, sizeof(co));
	co.credentials_path = path;
	co.age_key_file = keyfile;
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
	if (!strcmp(argv[1], "encrypt"))
		return cmd_encrypt(argc - 1, argv + 1);
	if (!strcmp(argv[1], "check"))
		return cmd_check(argc - 1, argv + 1);
	fprintf(stderr,
	        "labctl credentials: unknown subcommand '%s' (see 'labctl credentials --help')\n",
	        argv[1]);
	return 2;
}
