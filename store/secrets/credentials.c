/* Bucket settings from flags, environment and SOPS file.  See credentials.h. */
#include "store/secrets/credentials.h"

#include "common/buf.h"
#include "common/log.h"
#include "store/secrets/sops.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>

static void free_str(char **s)
{
	if (*s) {
		OPENSSL_cleanse(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

void credentials_config_clear(struct s3_config *cfg)
{
	s3_config_free(cfg);
}

/* From the moment a secret is in memory the process is not dumpable: no
 * core file holds it, and /proc/PID/{mem,environ,...} belong to root, so
 * other processes of the same user cannot read it (nor ptrace us).  This
 * is the one place both programs get their secrets from. */
static void secrets_held(void)
{
	static atomic_flag done = ATOMIC_FLAG_INIT;
	if (atomic_flag_test_and_set(&done))
		return;
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
		log_debug("prctl(PR_SET_DUMPABLE, 0) failed; core dumps may hold the secret key");
}

int credentials_endpoint_in_clear(const char *endpoint)
{
	char host[256];
	const char *a, *end;
	size_t n;
	unsigned char addr[16];
	if (!endpoint || strncasecmp(endpoint, "http://", 7))
		return 0;
	a = endpoint + 7;
	if (*a == '[') {
		a++;
		end = strchr(a, ']');
		if (!end)
			return 1;
	} else {
		end = a + strcspn(a, ":/?#");
	}
	n = (size_t)(end - a);
	if (!n || n >= sizeof(host))
		return 1;
	memcpy(host, a, n);
	host[n] = '\0';
	if (!strcasecmp(host, "localhost"))
		return 0;
	if (inet_pton(AF_INET, host, addr) == 1)
		return addr[0] != 127;
	if (inet_pton(AF_INET6, host, addr) == 1) {
		static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0,    0,
		                                           0, 0, 0, 0, 0xff, 0xff};
		if (!memcmp(addr, v4mapped, 12))
			return addr[12] != 127;
		return !IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)addr);
	}
	return 1;
}

/* Plain HTTP is fine to a server on this machine (tests, a local gateway);
 * to anything else the requests and the bytes can be read and altered on
 * the way (imgfs still checks every block against its record, but labctl's
 * uploads and the listing are exposed).  Said once per process. */
static void warn_in_clear(const char *endpoint)
{
	static atomic_flag done = ATOMIC_FLAG_INIT;
	if (!credentials_endpoint_in_clear(endpoint) || atomic_flag_test_and_set(&done))
		return;
	log_warn("endpoint %s is plain http:// to another host: requests and data travel "
	         "unencrypted and can be read or altered on the way; use https://",
	         endpoint);
}

void credentials_file_free(struct cred_file *f)
{
	if (!f)
		return;
	free_str(&f->endpoint);
	free_str(&f->bucket);
	free_str(&f->access_key);
	free_str(&f->secret_key);
	free_str(&f->region);
}

int cred_opt_set(struct cred_opts *o, int id, const char *value)
{
	switch (id) {
	case CRED_OPT_CREDENTIALS: o->credentials_path = value; return 1;
	case CRED_OPT_AGE_KEY_FILE: o->age_key_file = value; return 1;
	case CRED_OPT_ENDPOINT: o->endpoint = value; return 1;
	case CRED_OPT_BUCKET: o->bucket = value; return 1;
	case CRED_OPT_CA_BUNDLE: o->ca_bundle = value; return 1;
	}
	return 0;
}

const char *credentials_age_key_file(const char *explicit_path, char *buf, size_t cap)
{
	const char *env = getenv("SOPS_AGE_KEY_FILE"), *xdg = getenv("XDG_CONFIG_HOME"),
	           *home = getenv("HOME");
	struct stat st;
	if (explicit_path && *explicit_path)
		return explicit_path;
	if (env && *env)
		return env;
	if (xdg && *xdg)
		snprintf(buf, cap, "%s/sops/age/keys.txt", xdg);
	else if (home && *home)
		snprintf(buf, cap, "%s/.config/sops/age/keys.txt", home);
	else
		return NULL;
	return stat(buf, &st) == 0 ? buf : NULL;
}

static int take(const struct sops_tree *t, const char *key, char **out, struct err *e)
{
	const struct sops_leaf *l = sops_tree_get(t, key);
	if (!l || !l->value_len)
		return 0;
	if (memchr(l->value, '\0', l->value_len))
		return err_set(e, ERR_INVALID, "`%s` contains a NUL byte", key);
	if (!(*out = strdup(l->value)))
		return err_set(e, ERR_IO, "out of memory");
	return 0;
}

int credentials_load_file(const char *path, const char *age_key_file, struct cred_file *out,
                          struct err *e)
{
	struct sops_tree t;
	struct sops_keys k;
	struct sops_file *f = NULL;
	unsigned char key[SOPS_DATA_KEY_LEN];
	char defpath[512];
	const char *kf = credentials_age_key_file(age_key_file, defpath, sizeof(defpath));
	int rc = -1;
	memset(out, 0, sizeof(*out));
	memset(&k, 0, sizeof(k));
	k.age_key_file = kf;
	k.age_key_text = getenv("SOPS_AGE_KEY");
	snprintf(out->age_key_file, sizeof(out->age_key_file), "%s", kf ? kf : "");
	memset(&t, 0, sizeof(t));
	if (sops_load(path, &f, e)) {
		err_prefix(e, "reading credentials file");
		goto out;
	}
	if (sops_data_key(f, &k, key, out->key_source, sizeof(out->key_source), e)) {
		err_prefix(e, "credentials file %s: finding the data key", path);
		goto out;
	}
	if (sops_decrypt(f, key, 0, &t, e)) {
		err_prefix(e, "credentials file %s: decrypting", path);
		goto out;
	}
	if (take(&t, "endpoint", &out->endpoint, e) || take(&t, "bucket", &out->bucket, e) ||
	    take(&t, "access_key", &out->access_key, e) ||
	    take(&t, "secret_key", &out->secret_key, e) || take(&t, "region", &out->region, e)) {
		err_prefix(e, "credentials file %s", path);
		goto out;
	}
	secrets_held();
	rc = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	sops_tree_free(&t);
	sops_file_free(f);
	if (rc)
		credentials_file_free(out);
	return rc;
}

static const char *env_nonempty(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* An E2_* variable, else its AWS twin(s) (CLI.md "Both programs"). */
static const char *env_either(const char *e2, const char *aws, const char *aws2)
{
	const char *v = env_nonempty(e2);
	if (!v && aws)
		v = env_nonempty(aws);
	if (!v && aws2)
		v = env_nonempty(aws2);
	return v;
}

#define ENV_ENDPOINT env_either("E2_ENDPOINT", "AWS_ENDPOINT_URL", NULL)
#define ENV_BUCKET   env_nonempty("E2_BUCKET")
#define ENV_ACCESS   env_either("E2_ACCESS_KEY", "AWS_ACCESS_KEY_ID", NULL)
#define ENV_SECRET   env_either("E2_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", NULL)
#define ENV_REGION   env_either("E2_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")

static int set_field(char **dst, const char *a, const char *b, const char *c)
{
	const char *v = a ? a : b ? b : c;
	if (!v || *dst)
		return 0;
	*dst = strdup(v);
	return *dst ? 0 : -1;
}

int credentials_merge(const struct cred_opts *o, const struct cred_file *cf, struct s3_config *out,
                      struct err *e)
{
	static const struct {
		const char *field, *env, *flag;
	} req[] = {{"endpoint", "E2_ENDPOINT", " or pass --endpoint"},
	           {"bucket", "E2_BUCKET", " or pass --bucket"},
	           {"access_key", "E2_ACCESS_KEY", ""},
	           {"secret_key", "E2_SECRET_KEY", ""}};
	static const struct cred_file none;
	struct buf missing = BUF_INIT;
	const char *path =
	        o && o->credentials_path && *o->credentials_path ? o->credentials_path : NULL;
	size_t i;
	int rc = -1;
	if (!cf)
		cf = &none;
	memset(out, 0, sizeof(*out));
	if (set_field(&out->endpoint, o && o->endpoint && *o->endpoint ? o->endpoint : NULL,
	              ENV_ENDPOINT, cf->endpoint) ||
	    set_field(&out->bucket, o && o->bucket && *o->bucket ? o->bucket : NULL, ENV_BUCKET,
	              cf->bucket) ||
	    set_field(&out->access_key, ENV_ACCESS, cf->access_key, NULL) ||
	    set_field(&out->secret_key, ENV_SECRET, cf->secret_key, NULL) ||
	    set_field(&out->region, ENV_REGION, cf->region, "us-east-1") ||
	    /* a session token goes with the environment's keys, not the file's */
	    set_field(&out->session_token,
	              !env_nonempty("E2_ACCESS_KEY") ? env_nonempty("AWS_SESSION_TOKEN") : NULL,
	              NULL, NULL) ||
	    set_field(&out->ca_bundle, o && o->ca_bundle && *o->ca_bundle ? o->ca_bundle : NULL,
	              NULL, NULL)) {
		err_set(e, ERR_IO, "out of memory");
		goto out;
	}
	for (i = 0; i < sizeof(req) / sizeof(*req); i++) {
		const char *v = i == 0   ? out->endpoint
		                : i == 1 ? out->bucket
		                : i == 2 ? out->access_key
		                         : out->secret_key;
		if (v)
			continue;
		buf_appendf(&missing, "%s%s (set %s%s, or put `%s` in the --credentials file)",
		            missing.len ? "; " : "", req[i].field, req[i].env, req[i].flag,
		            req[i].field);
	}
	if (missing.len) {
		if (path)
			err_set(e, ERR_USAGE,
			        "bucket settings incomplete: missing %s (%s lacks it)",
			        missing.data, path);
		else
			err_set(e, ERR_USAGE, "bucket settings incomplete: missing %s",
			        missing.data);
		goto out;
	}
	out->retry_budget_s = 30;
	out->max_attempts = 5;
	out->connect_timeout_s = 10;
	out->low_speed_timeout_s = 30;
	/* one copy of the secret for every connection made from this config */
	if (s3_config_share_secret(out, e))
		goto out;
	secrets_held();
	warn_in_clear(out->endpoint);
	rc = 0;
out:
	buf_free(&missing);
	if (rc)
		credentials_config_clear(out);
	return rc;
}

int credentials_resolve(const struct cred_opts *o, struct s3_config *out, struct err *e)
{
	struct cred_file cf;
	const char *path =
	        o && o->credentials_path && *o->credentials_path ? o->credentials_path : NULL;
	int have_file = 0, rc;
	int complete = (o && o->endpoint && *o->endpoint ? 1 : !!ENV_ENDPOINT) &&
	               (o && o->bucket && *o->bucket ? 1 : !!ENV_BUCKET) && ENV_ACCESS &&
	               ENV_SECRET;
	memset(out, 0, sizeof(*out));
	if (path && !complete) {
		if (credentials_load_file(path, o->age_key_file, &cf, e))
			return -1;
		have_file = 1;
		log_debug("credentials: %s opened with %s", path, cf.key_source);
	} else if (path) {
		log_debug("credentials: the E2_* environment/flags are complete; %s not read",
		          path);
	}
	rc = credentials_merge(o, have_file ? &cf : NULL, out, e);
	if (have_file)
		credentials_file_free(&cf);
	return rc;
}
