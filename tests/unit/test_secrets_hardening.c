/* Issue 12, finding 10: what a process holding the secret key does about it.
 * One heap copy of the secret for every config copied from the resolved one,
 * the process undumpable once it holds a secret, and the plain-HTTP warning
 * (decided without any request: nothing here touches the network). */
#include "check.h"
#include "common/log.h"
#include "store/s3/s3.h"
#include "store/secrets/credentials.h"

#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static void test_in_clear(void)
{
	static const struct {
		const char *endpoint;
		int in_clear;
	} v[] = {
	        {"https://s3.example.com", 0},
	        {"HTTPS://s3.example.com:443/base", 0},
	        {"http://127.0.0.1:8080", 0},
	        {"http://127.1.2.3", 0},
	        {"http://localhost:9000/path", 0},
	        {"http://LocalHost", 0},
	        {"http://[::1]:8080", 0},
	        {"http://[::ffff:127.0.0.1]/", 0},
	        {"http://example.invalid", 1},
	        {"HTTP://example.invalid:80/", 1},
	        {"http://192.0.2.1:1", 1},
	        {"http://10.0.0.1/", 1},
	        {"http://[2001:db8::1]:80", 1},
	        {"http://[::ffff:192.0.2.1]", 1},
	        {"http://127.0.0.1.example.com", 1},
	        {"http://localhost.example.com", 1},
	        {"http://128.0.0.1", 1},
	        {"http://", 1},
	        {"http://[::1", 1},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(*v); i++) {
		int got = credentials_endpoint_in_clear(v[i].endpoint);
		if (got != v[i].in_clear)
			fprintf(stderr, "%s: got %d\n", v[i].endpoint, got);
		CHECK(got == v[i].in_clear);
	}
}

/* How many lines of the file at path contain needle. */
static int count_in(const char *path, const char *needle)
{
	char line[1024];
	int n = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			n++;
	fclose(f);
	return n;
}

static void resolve_with(const char *endpoint, struct s3_config *c)
{
	struct cred_opts co = {0};
	struct err e = {0};
	setenv("E2_ENDPOINT", endpoint, 1);
	CHECK(credentials_resolve(&co, c, &e) == 0);
}

/* Secrets held, the warning: in this order, since the process stays
 * undumpable once it holds one. */
static void test_process(void)
{
	char path[] = "/tmp/test_secrets_hardening.XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	struct s3_config c = {0}, copy1 = {0}, copy2 = {0};
	struct err e = {0};
	CHECK(fd >= 0 && saved >= 0);
	CHECK(prctl(PR_GET_DUMPABLE) == 1);
	setenv("E2_BUCKET", "b", 1);
	setenv("E2_ACCESS_KEY", "AK", 1);
	setenv("E2_SECRET_KEY", "the-secret-key", 1);
	dup2(fd, 2);

	/* loopback: no warning; then the first other host warns, once */
	resolve_with("http://127.0.0.1:9000", &c);
	s3_config_free(&c);
	resolve_with("http://[::1]:9000", &c);
	s3_config_free(&c);
	resolve_with("https://s3.example.com", &c);
	s3_config_free(&c);
	CHECK(count_in(path, "plain http://") == 0);
	resolve_with("http://example.invalid:8080", &c);
	s3_config_free(&c);
	resolve_with("http://192.0.2.1:1", &c);
	fflush(stderr);
	dup2(saved, 2);
	CHECK(count_in(path, "labctl: warning: endpoint http://example.invalid:8080 is plain "
	                     "http:// to another host: requests and data travel unencrypted and "
	                     "can be read or altered on the way; use https://") == 1);
	CHECK(count_in(path, "plain http://") == 1);
	CHECK(count_in(path, "the-secret-key") == 0);

	/* holding a secret: not dumpable from now on */
	CHECK(prctl(PR_GET_DUMPABLE) == 0);

	/* one copy: the copies point to the resolved config's bytes, which stay
	 * valid until the last of them is freed (ASan: no use after free) */
	CHECK_STR(c.secret_key, "the-secret-key");
	CHECK(s3_config_copy(&copy1, &c, &e) == 0 && s3_config_copy(&copy2, &copy1, &e) == 0);
	CHECK(copy1.secret_key == c.secret_key && copy2.secret_key == c.secret_key);
	CHECK(copy1.endpoint != c.endpoint); /* the rest is copied as before */
	s3_config_free(&c);
	CHECK(c.secret_key == NULL && c.shared == NULL);
	CHECK_STR(copy2.secret_key, "the-secret-key");
	s3_config_free(&copy2);
	CHECK_STR(copy1.secret_key, "the-secret-key");
	s3_config_free(&copy1);

	/* a config built by hand still gets copies of its own */
	{
		struct s3_config h = {0}, hc = {0};
		h.secret_key = strdup("hand");
		CHECK(s3_config_copy(&hc, &h, &e) == 0);
		CHECK(hc.secret_key != h.secret_key);
		CHECK_STR(hc.secret_key, "hand");
		s3_config_free(&h);
		s3_config_free(&hc);
	}
	unlink(path);
	close(fd);
	close(saved);
}

int main(void)
{
	unsetenv("IMGSTORE_LOG");
	log_init("labctl", LOG_LVL_INFO);
	test_in_clear();
	test_process();
	return check_report("secrets_hardening");
}
