/* Rules on single manifest values: names, URLs, checksums, paths. */
#include "manifest/mf_internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int why_set(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int why_set(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
	return -1;
}

void mf_quote(char out[MF_QUOTE_MAX], const char *s)
{
	/* Room for the longest escape (\xNN), "...", the closing quote and NUL. */
	const size_t limit = MF_QUOTE_MAX - 10;
	size_t o = 0;
	out[o++] = '"';
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (o >= limit) {
			/* Do not cut a UTF-8 sequence in two. */
			while (o > 1 && ((unsigned char)out[o - 1] & 0xc0) == 0x80)
				o--;
			if (o > 1 && ((unsigned char)out[o - 1] & 0xc0) == 0xc0)
				o--;
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch == '\n') {
			memcpy(out + o, "\\n", 2);
			o += 2;
		} else if (ch == '\t') {
			memcpy(out + o, "\\t", 2);
			o += 2;
		} else if (ch < 0x20 || ch == 0x7f) {
			snprintf(out + o, 5, "\\x%02x", ch);
			o += 4;
		} else {
			out[o++] = (char)ch;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
}

/* Optimal string alignment distance (adjacent transpositions count 1),
 * ASCII case ignored; strings of at most 64 bytes. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
	size_t d[65][65];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++) {
		for (size_t j = 1; j <= lb; j++) {
			int ca = tolower((unsigned char)a[i - 1]),
			    cb = tolower((unsigned char)b[j - 1]);
			size_t best = d[i - 1][j - 1] + (ca != cb);
			if (d[i - 1][j] + 1 < best)
				best = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < best)
				best = d[i][j - 1] + 1;
			if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
			    tolower((unsigned char)a[i - 2]) == cb && d[i - 2][j - 2] + 1 < best)
				best = d[i - 2][j - 2] + 1;
			d[i][j] = best;
		}
	}
	return d[la][lb];
}

const char *mf_closest(const char *word, const char *const *cands, size_t n)
{
	size_t lw = strlen(word), best_d = (size_t)-1;
	const char *best = NULL;
	if (lw > 64)
		return NULL;
	if (n > 1000)
		n = 1000;
	for (size_t i = 0; i < n; i++) {
		size_t lc, maxd, d;
		if (!cands[i])
			continue;
		lc = strlen(cands[i]);
		if (lc > 64)
			continue;
		maxd = lc <= 4 ? 1 : lc <= 8 ? 2 : 3;
		if ((lw > lc ? lw - lc : lc - lw) > maxd)
			continue;
		d = edit_distance(word, lw, cands[i], lc);
		if (d <= maxd && d < best_d) {
			best_d = d;
			best = cands[i];
		}
	}
	return best;
}

static int has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

int mf_rule_name(const char *what, const char *s, char *why, size_t n)
{
	char q[MF_QUOTE_MAX];
	if (strlen(s) > MF_MAX_NAME)
		return why_set(why, n, "%s is longer than %d bytes; shorten it", what, MF_MAX_NAME);
	for (const char *p = s; *p; p++) {
		if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
			mf_quote(q, s);
			return why_set(why, n,
			               "%s %s contains whitespace or a control character; use "
			               "letters, digits, \"-\", \".\" and \"_\"",
			               what, q);
		}
	}
	return 0;
}

static int is_host_char(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

int mf_rule_url(const char *what, const char *s, char *why, size_t n)
{
	char q[MF_QUOTE_MAX];
	const char *auth, *end, *host, *hend, *port = NULL;
	size_t len = strlen(s);
	mf_quote(q, s);
	if (len > MF_MAX_URL)
		return why_set(why, n, "%s is longer than %d characters; use a shorter URL", what,
		               MF_MAX_URL);
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == 0x7f)
			return why_set(why, n,
			               "%s %s contains a space or control character; "
			               "percent-encode it (a space is %%20)",
			               what, q);
	if (strncmp(s, "https://", 8)) {
		if (!strncasecmp(s, "http://", 7))
			return why_set(why, n,
			               "%s %s uses plain http; use an https:// URL (downloads must "
			               "be over TLS)",
			               what, q);
		if (!strncasecmp(s, "https://", 8))
			return why_set(why, n,
			               "%s %s spells the scheme in upper case; write \"https://\"",
			               what, q);
		return why_set(why, n, "%s %s is not an https:// URL; write https://HOST/PATH",
		               what, q);
	}
	auth = s + 8;
	end = auth + strcspn(auth, "/?#");
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			return why_set(why, n,
			               "%s contains a user name or password (\"...@\"); remove it "
			               "(credentials in a URL end up in logs)",
			               what);
	host = auth;
	if (*host == '[') {
		hend = memchr(host, ']', (size_t)(end - host));
		if (!hend || hend == host + 1)
			return why_set(
			        why, n,
			        "%s %s has an invalid IPv6 host; write https://[ADDRESS]/PATH",
			        what, q);
		for (const char *p = host + 1; p < hend; p++)
			if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
				return why_set(why, n,
				               "%s %s has an invalid IPv6 host; write "
				               "https://[ADDRESS]/PATH",
				               what, q);
		hend++;
		if (hend < end && *hend != ':')
			return why_set(why, n, "%s %s has an invalid host; write https://HOST/PATH",
			               what, q);
	} else {
		hend = memchr(host, ':', (size_t)(end - host));
		if (!hend)
			hend = end;
		if (hend == host)
			return why_set(why, n, "%s %s has no host; write https://HOST/PATH", what,
			               q);
		for (const char *p = host; p < hend; p++)
			if (!is_host_char(*p))
				return why_set(
				        why, n,
				        "%s %s has an invalid host name; use letters, digits, "
				        "\"-\" and \".\" (write international names in their "
				        "xn-- form)",
				        what, q);
	}
	if (hend < end) {
		unsigned long v = 0;
		port = hend + 1;
		if (port == end || end - port > 5)
			return why_set(why, n,
			               "%s %s has an invalid port; write https://HOST:PORT/PATH",
			               what, q);
		for (const char *p = port; p < end; p++) {
			if (!isdigit((unsigned char)*p))
				return why_set(
				        why, n,
				        "%s %s has an invalid port; write https://HOST:PORT/PATH",
				        what, q);
			v = v * 10 + (unsigned long)(*p - '0');
		}
		if (v < 1 || v > 65535)
			return why_set(why, n,
			               "%s %s has an invalid port; write https://HOST:PORT/PATH",
			               what, q);
	}
	return 0;
}

static int all_hex(const char *s)
{
	for (; *s; s++)
		if (!isxdigit((unsigned char)*s))
			return 0;
	return 1;
}

int mf_rule_checksum(const char *what, const char *s, enum hash_alg *alg, char *why, size_t n)
{
	char q[MF_QUOTE_MAX], algname[16];
	const char *colon = strchr(s, ':'), *hex;
	size_t digits, have;
	mf_quote(q, s);
	if (!colon) {
		size_t l = strlen(s);
		if (all_hex(s) && (l == 64 || l == 128))
			return why_set(
			        why, n,
			        "%s has no algorithm; write \"%s:\" before the %zu hex digits",
			        what, l == 64 ? "sha256" : "sha512", l);
		return why_set(why, n,
		               "%s %s is not a checksum; write sha256:<64 hex digits> or "
		               "sha512:<128 hex digits>",
		               what, q);
	}
	if ((size_t)(colon - s) >= sizeof(algname))
		goto bad_alg;
	memcpy(algname, s, (size_t)(colon - s));
	algname[colon - s] = '\0';
	if (hash_alg_parse(algname, alg)) {
		if (!strcasecmp(algname, "sha256") || !strcasecmp(algname, "sha512"))
			return why_set(why, n,
			               "%s spells the algorithm in upper case; write \"%s:\"", what,
			               algname[3] == '2' ? "sha256" : "sha512");
		goto bad_alg;
	}
	hex = colon + 1;
	digits = 2 * hash_len(*alg);
	for (const char *p = hex; *p; p++) {
		if (!isxdigit((unsigned char)*p)) {
			if (isgraph((unsigned char)*p))
				return why_set(
				        why, n,
				        "%s contains \"%c\", which is not a hex digit; write %s: "
				        "followed by %zu hex digits",
				        what, *p, algname, digits);
			return why_set(why, n,
			               "%s contains a character that is not a hex digit; write %s: "
			               "followed by %zu hex digits",
			               what, algname, digits);
		}
	}
	have = strlen(hex);
	if (have != digits)
		return why_set(why, n, "%s has %zu hex digits after \"%s:\"; a %s checksum has %zu",
		               what, have, algname, algname, digits);
	return 0;
bad_alg : {
	char qa[MF_QUOTE_MAX], name[64];
	size_t l = (size_t)(colon - s) < sizeof(name) - 1 ? (size_t)(colon - s) : sizeof(name) - 1;
	memcpy(name, s, l);
	name[l] = '\0';
	mf_quote(qa, name);
	return why_set(why, n,
	               "%s uses the algorithm %s; use sha256:<64 hex digits> or "
	               "sha512:<128 hex digits>",
	               what, qa);
}
}

int mf_rule_destination(const char *what, const char *s, char *why, size_t n)
{
	char q[MF_QUOTE_MAX];
	size_t len = strlen(s);
	const char *seg;
	if (!len)
		return why_set(why, n, "%s is empty; write a path such as DIR/FILE.qcow2", what);
	if (len > MF_MAX_DESTINATION)
		return why_set(why, n, "%s is %zu bytes long; the limit is %d", what, len,
		               MF_MAX_DESTINATION);
	mf_quote(q, s);
	if (has_control(s))
		return why_set(why, n, "%s %s contains a control character; remove it", what, q);
	if (strchr(s, '\\'))
		return why_set(why, n,
		               "%s %s contains a backslash; separate directories with \"/\"", what,
		               q);
	if (s[0] == '/') {
		char qs[MF_QUOTE_MAX];
		const char *rest = s + strspn(s, "/");
		mf_quote(qs, *rest ? rest : "DIR/FILE.qcow2");
		return why_set(why, n,
		               "%s %s starts with \"/\"; write it relative to images/ in the "
		               "bucket, like %s",
		               what, q, qs);
	}
	if (s[len - 1] == '/') {
		char qs[MF_QUOTE_MAX], *sugg;
		size_t keep = len;
		while (keep && s[keep - 1] == '/')
			keep--;
		sugg = malloc(keep + sizeof("/IMAGE.qcow2"));
		if (!sugg)
			return why_set(why, n, "%s %s ends with \"/\"; name a file", what, q);
		memcpy(sugg, s, keep);
		strcpy(sugg + keep, "/IMAGE.qcow2");
		mf_quote(qs, sugg);
		free(sugg);
		return why_set(why, n, "%s %s ends with \"/\"; name a file, like %s", what, q, qs);
	}
	for (seg = s;;) {
		size_t l = strcspn(seg, "/");
		if (l == 0)
			return why_set(why, n,
			               "%s %s has an empty path segment (\"//\"); remove the extra "
			               "\"/\"",
			               what, q);
		if (l == 1 && seg[0] == '.')
			return why_set(why, n, "%s %s has a \".\" segment; remove it", what, q);
		if (l == 2 && seg[0] == '.' && seg[1] == '.')
			return why_set(why, n,
			               "%s %s has a \"..\" segment; write the path without it",
			               what, q);
		if (l > MF_MAX_SEGMENT)
			return why_set(why, n,
			               "%s has a path segment longer than %d bytes; shorten it",
			               what, MF_MAX_SEGMENT);
		if (!seg[l])
			break;
		seg += l + 1;
	}
	if (!strncmp(s, MF_RESERVED_DIR "/", sizeof(MF_RESERVED_DIR)))
		return why_set(why, n,
		               "%s %s is inside " MF_RESERVED_DIR "/, which imgfs reserves for "
		               "its control files; choose another directory",
		               what, q);
	/* its record would be metadata/versions/..., where previous versions'
	 * records live (versions/<sha256-hex>, metadata/versions/<hex>.json) */
	if (!strncmp(s, MF_VERSIONS_DIR "/", sizeof(MF_VERSIONS_DIR)))
		return why_set(why, n,
		               "%s %s is inside " MF_VERSIONS_DIR "/, whose records would mix "
		               "with those of previous versions (metadata/" MF_VERSIONS_DIR
		               "/); choose another directory",
		               what, q);
	return 0;
}

int mf_rule_repo_path(const char *what, const char *s, char *why, size_t n)
{
	char q[MF_QUOTE_MAX];
	size_t len = strlen(s);
	long depth = 0;
	if (!len)
		return why_set(why, n,
		               "%s is empty; write the path of a file, relative to the repository "
		               "root",
		               what);
	mf_quote(q, s);
	if (len > 4096)
		return why_set(why, n, "%s is %zu bytes long; the limit is 4096", what, len);
	if (has_control(s))
		return why_set(why, n, "%s %s contains a control character; remove it", what, q);
	if (s[0] == '/')
		return why_set(why, n,
		               "%s %s is absolute; write it relative to the repository root (the "
		               "directory that contains images/)",
		               what, q);
	if (s[len - 1] == '/')
		return why_set(why, n, "%s %s ends with \"/\"; name a file", what, q);
	for (const char *seg = s;;) {
		size_t l = strcspn(seg, "/");
		if (l == 2 && seg[0] == '.' && seg[1] == '.') {
			if (--depth < 0)
				return why_set(
				        why, n,
				        "%s %s leads outside the repository; name a file inside "
				        "it, relative to its root",
				        what, q);
		} else if (l == 4 && !strncasecmp(seg, ".git", 4)) {
			return why_set(why, n,
			               "%s %s is inside .git; name a file of the working tree",
			               what, q);
		} else if (l && !(l == 1 && seg[0] == '.')) {
			depth++;
		}
		if (!seg[l])
			break;
		seg += l + 1;
	}
	if (depth <= 0)
		return why_set(why, n, "%s %s names the repository root, not a file; name a file",
		               what, q);
	return 0;
}

int mf_rule_output(const char *what, const char *s, char *why, size_t n)
{
	char q[MF_QUOTE_MAX];
	size_t len = strlen(s);
	mf_quote(q, s);
	if (len > MF_MAX_SEGMENT)
		return why_set(why, n, "%s is longer than %d bytes; shorten it", what,
		               MF_MAX_SEGMENT);
	if (has_control(s))
		return why_set(why, n, "%s %s contains a control character; remove it", what, q);
	if (strchr(s, '/') || strchr(s, '\\'))
		return why_set(why, n,
		               "%s %s contains a directory; write a plain file name (it is created "
		               "in --overlay-dir)",
		               what, q);
	if (len < 6 || strcmp(s + len - 6, ".qcow2"))
		return why_set(why, n, "%s %s does not end in .qcow2; name it like NAME.qcow2",
		               what, q);
	if (len == 6)
		return why_set(why, n, "%s %s has no name before .qcow2; name it like NAME.qcow2",
		               what, q);
	return 0;
}
