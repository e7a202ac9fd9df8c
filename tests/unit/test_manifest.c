/* Unit tests for manifest/: parsing into structs, every validation rule (exact
 * messages and positions, fixtures in tests/unit/manifests/), templates and
 * replacements. */
#include "manifest/manifest.h"
#include "tests/unit/check.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const char *const CK1 =
        "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/* Load a fixture (cwd is tests/unit/manifests) and compare every problem. */
static void expect_problems(const char *file, const char *const *want, size_t nwant)
{
	struct manifest *m = (struct manifest *)1;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	int rc = manifest_load(file, &m, &p, &e);
	size_t n = p.n > nwant ? p.n : nwant;
	CHECK(rc == -1);
	CHECK(m == NULL);
	CHECK(e.code == ERR_INVALID);
	for (size_t i = 0; i < n; i++) {
		char *got = i < p.n ? mf_problem_format(&p, i) : NULL;
		const char *w = i < nwant ? want[i] : "(no more problems)";
		CHECK_STR(got ? got : "(no more problems)", w);
		free(got);
	}
	manifest_free(rc ? NULL : m);
	mf_problems_free(&p);
}

#define EXPECT(file, ...)                                                                          \
	do {                                                                                       \
		static const char *const want_[] = {__VA_ARGS__};                                  \
		expect_problems(file, want_, NELEM(want_));                                        \
	} while (0)

/* ---- the valid manifest, field by field --------------------------------- */

static void test_valid_full(void)
{
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	const struct mf_image *img;
	const struct mf_update_file *u;
	const struct mf_overlay *o;

	CHECK(manifest_load("valid_full.yaml", &m, &p, &e) == 0);
	CHECK(p.n == 0);
	if (!m) {
		mf_problems_print(stderr, &p);
		mf_problems_free(&p);
		return;
	}
	CHECK_STR(m->path, "valid_full.yaml");
	CHECK_STR(m->name, "lab-images");
	CHECK(m->nimages == 3);
	CHECK(m->noverlays == 2);
	CHECK(!manifest_names_no_images(m));

	img = &m->images[0];
	CHECK_STR(img->name, "talos-1.9.1");
	CHECK_STR(img->source.url, "https://factory.talos.dev/image/abc/v1.9.1/metal-amd64.raw.xz");
	CHECK_STR(img->source.checksum,
	          "sha256:1111111111111111111111111111111111111111111111111111111111111111");
	CHECK(img->source.decompress == MF_DECOMPRESS_XZ);
	CHECK_STR(img->destination, "talos/talos-1.9.1-amd64.raw");
	CHECK(img->validation.algorithm == HASH_SHA256);
	CHECK_STR(img->validation.expected,
	          "sha256:2222222222222222222222222222222222222222222222222222222222222222");
	CHECK_STR(mf_image_effective_checksum(img), img->validation.expected);
	CHECK(img->pos.line == 8 && img->pos.col == 7);
	CHECK(img->nupdate_files == 1);
	u = &img->update_files[0];
	CHECK_STR(u->path, "packer/talos/variables.pkr.hcl");
	CHECK(u->pos.line == 18 && u->pos.col == 9);
	CHECK(u->nreplacements == 2);
	CHECK_STR(u->replacements[0].pattern, "talos_image_url\\s*=\\s*\"[^\"]*\"");
	CHECK_STR(u->replacements[0].value, "talos_image_url = \"{{ .Source.URL }}\"");
	CHECK(u->replacements[0].pos.line == 20 && u->replacements[0].pos.col == 13);
	CHECK_STR(u->replacements[1].pattern, "talos_image_checksum\\s*=\\s*\"[^\"]*\"");
	CHECK_STR(u->replacements[1].value, "talos_image_checksum = \"{{ .Source.Checksum }}\"");

	img = &m->images[1];
	CHECK_STR(img->name, "debian-12");
	CHECK_STR(img->source.url, "https://cloud.debian.org/images/cloud/bookworm/latest/"
	                           "debian-12-genericcloud-amd64.qcow2");
	CHECK_STR(img->source.checksum,
	          "sha512:33333333333333333333333333333333333333333333333333333333333333333333333"
	          "333333333333333333333333333333333333333333333333333333333");
	CHECK(img->source.decompress == MF_DECOMPRESS_NONE);
	CHECK_STR(img->destination, "debian/debian-12.qcow2");
	CHECK(img->validation.algorithm == HASH_SHA512);
	CHECK(img->validation.expected == NULL);
	CHECK_STR(mf_image_effective_checksum(img), img->source.checksum);
	CHECK(img->nupdate_files == 0 && img->update_files == NULL);

	img = &m->images[2];
	CHECK_STR(img->name, "alpine.3_21");
	CHECK_STR(img->source.url,
	          "https://[2001:db8::1]:8443/alpine/base.qcow2.zst?mirror=1#frag");
	CHECK_STR(img->source.checksum,
	          "sha256:ABCDEFabcdef4444444444444444444444444444444444444444444444444444");
	CHECK(img->source.decompress == MF_DECOMPRESS_ZSTD);
	CHECK_STR(img->destination, "alpine/base.qcow2");
	CHECK(img->validation.algorithm == HASH_SHA512); /* from expected's prefix */
	CHECK_STR(mf_image_effective_checksum(img),
	          "sha512:55555555555555555555555555555555555555555555555555555555555555555555555"
	          "555555555555555555555555555555555555555555555555555555555");
	CHECK(img->nupdate_files == 2);
	u = &img->update_files[0];
	CHECK_STR(u->path, "./packer/../packer/alpine.pkr.hcl");
	CHECK(u->nreplacements == 1);
	CHECK_STR(u->replacements[0].pattern, "(?i)ALPINE_NAME\\s*=\\s*\"(?P<old>[^\"]*)\"");
	CHECK_STR(u->replacements[0].value, "alpine_name = \"{{.Name}}\" # $1 \\1 ${old}");
	u = &img->update_files[1];
	CHECK_STR(u->path, "terraform/images.tfvars");
	CHECK(u->nreplacements == 1);
	CHECK_STR(u->replacements[0].pattern, "(?m)^image\\s*=\\s*\\d+$");
	CHECK_STR(u->replacements[0].value, "");

	o = &m->overlays[0];
	CHECK_STR(o->name, "alpine-wireguard");
	CHECK_STR(o->base, "alpine/base.qcow2");
	CHECK(o->base_image == &m->images[2]);
	CHECK_STR(o->output, "alpine-wireguard.qcow2");
	CHECK_STR(o->variant, "wireguard");
	CHECK(o->npackages == 2);
	CHECK(o->npackages == 2 && !strcmp(o->packages[0], "wireguard-tools") &&
	      !strcmp(o->packages[1], "iptables"));
	CHECK(o->nservices == 1 && !strcmp(o->services[0], "wireguard"));
	CHECK(o->pos.line == 48 && o->pos.col == 7);
	o = &m->overlays[1];
	CHECK_STR(o->name, "debian-plain");
	CHECK_STR(o->base, "debian-12"); /* an image name */
	CHECK(o->base_image == &m->images[1]);
	CHECK_STR(o->output, "debian-plain.qcow2");
	CHECK(o->variant == NULL);
	CHECK(o->npackages == 2 && !strcmp(o->packages[0], "wireguard-tools") &&
	      !strcmp(o->packages[1], "iptables")); /* *pkgs */
	CHECK(o->nservices == 0 && o->services == NULL);

	/* Look-ups. */
	CHECK(manifest_find_image(m, "debian-12") == &m->images[1]);
	CHECK(manifest_find_image(m, "debian") == NULL);
	CHECK(manifest_find_destination(m, "alpine/base.qcow2") == &m->images[2]);
	CHECK(manifest_find_destination(m, "alpine") == NULL);
	CHECK(manifest_find_overlay(m, "debian-plain") == &m->overlays[1]);
	CHECK(manifest_find_overlay(m, "x") == NULL);
	CHECK_STR(manifest_suggest_image(m, "debain-12"), "debian-12");
	CHECK_STR(manifest_suggest_image(m, "Talos-1.9.1"), "talos-1.9.1");
	CHECK(manifest_suggest_image(m, "ubuntu") == NULL);

	manifest_free(m);
	mf_problems_free(&p);
}

static void test_repo_example(void)
{
	const char *root = getenv("SOURCE_ROOT");
	char path[PATH_MAX];
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	snprintf(path, sizeof(path), "%s/examples/lab/images/images.yaml",
	         root ? root : "../../..");
	CHECK(manifest_load(path, &m, &p, &e) == 0);
	mf_problems_print(stderr, &p);
	CHECK(m && m->nimages >= 3 && m->noverlays >= 1);
	for (size_t i = 0; m && i < m->noverlays; i++)
		CHECK(m->overlays[i].base_image != NULL);
	manifest_free(m);
	mf_problems_free(&p);
}

static void test_empty_images(void)
{
	struct manifest *m = NULL;
	struct err e = {0};
	CHECK(manifest_load("empty_images.yaml", &m, NULL, &e) == 0);
	CHECK(m && manifest_names_no_images(m) && m->noverlays == 0);
	CHECK(m && m->images == NULL);
	manifest_free(m);
	/* spec: with nothing under it is a manifest without images, too. */
	static const char doc[] = "apiVersion: images.lab.gilman.io/v1alpha1\n"
	                          "kind: ImageManifest\nmetadata: {name: x}\nspec:\n";
	CHECK(manifest_load_buffer(doc, strlen(doc), "b", &m, NULL, &e) == 0);
	CHECK(m && manifest_names_no_images(m));
	manifest_free(m);
}

/* ---- every rule, from fixtures ------------------------------------------ */

static void test_header(void)
{
	EXPECT("header.yaml",
	       "header.yaml:1:1: spec is missing; write \"spec:\" with \"images:\" under it",
	       "header.yaml:1:13: apiVersion is \"images.lab.gilman.io/v1\"; set it to "
	       "\"images.lab.gilman.io/v1alpha1\"",
	       "header.yaml:2:7: kind is \"ImageList\"; set it to \"ImageManifest\"",
	       "header.yaml:4:3: unknown key \"nmae\" in metadata; did you mean \"name\"?",
	       "header.yaml:4:3: metadata.name is missing; write \"name: NAME\" under metadata:",
	       "header.yaml:5:1: unknown key \"images\"; it belongs under \"spec:\"",
	       "header.yaml:6:1: unknown key \"specs\"; did you mean \"spec\"?");
	EXPECT("no_spec.yaml",
	       "no_spec.yaml:1:1: apiVersion is missing; write \"apiVersion: "
	       "images.lab.gilman.io/v1alpha1\"",
	       "no_spec.yaml:1:1: metadata is missing; write \"metadata:\" with \"name: NAME\" "
	       "under it",
	       "no_spec.yaml:1:1: spec is missing; write \"spec:\" with \"images:\" under it");
}

static void test_unknown_keys(void)
{
	EXPECT("unknown_keys.yaml",
	       "unknown_keys.yaml:6:3: unknown key \"image\" in spec; did you mean \"images\"?",
	       "unknown_keys.yaml:8:7: image \"a\": destination is missing; write \"destination: "
	       "DIR/FILE\" (the image's path in the bucket)",
	       "unknown_keys.yaml:10:9: image \"a\": source.checksum is missing; write \"checksum: "
	       "sha256:<64 hex digits>\" under source:",
	       "unknown_keys.yaml:11:9: image \"a\": unknown key \"chekcsum\" in source; did you "
	       "mean \"checksum\"?",
	       "unknown_keys.yaml:12:7: image \"a\": unknown key \"destinaton\"; did you mean "
	       "\"destination\"?",
	       "unknown_keys.yaml:13:7: image \"a\": unknown key \"checksum\"; it belongs under "
	       "\"source:\"",
	       "unknown_keys.yaml:15:9: image \"a\": unknown key \"expectd\" in validation; did "
	       "you "
	       "mean \"expected\"?",
	       "unknown_keys.yaml:17:9: image \"a\": updateFile.replacements is missing; write "
	       "\"replacements:\" with a \"- pattern: REGEX\" and its \"value: TEXT\"",
	       "unknown_keys.yaml:18:9: image \"a\": unknown key \"replacement\" in updateFile; "
	       "did "
	       "you mean \"replacements\"?",
	       "unknown_keys.yaml:20:7: image \"a\": unknown key \"color\"; remove it (known keys: "
	       "name, source, destination, validation, updateFile, retention)",
	       "unknown_keys.yaml:21:7: image \"a\": duplicate key \"name\" (first at line 8); "
	       "remove one of them",
	       "unknown_keys.yaml:22:7: image \"a\": merge keys (\"<<\") are not supported; write "
	       "the keys out",
	       "unknown_keys.yaml:31:13: image \"c\": unknown key \"patern\" in "
	       "updateFile.replacements[0]; did you mean \"pattern\"?",
	       "unknown_keys.yaml:31:13: image \"c\": updateFile.replacements[0].pattern is "
	       "missing; write \"pattern: REGEX\" (in single quotes, so that \\ stays as is)",
	       "unknown_keys.yaml:37:7: overlay \"o\": unknown key \"pakages\"; did you mean "
	       "\"packages\"?");
}

static void test_types(void)
{
	EXPECT("types.yaml",
	       "types.yaml:1:13: apiVersion is a list but must be a string; write one value after "
	       "\"apiVersion:\"",
	       "types.yaml:3:11: metadata is a string but must be a mapping; write \"name: NAME\" "
	       "under metadata:",
	       "types.yaml:6:7: spec.images[0] is a string but must be a mapping; write each image "
	       "as \"- name: NAME\" with its keys under it",
	       "types.yaml:7:13: spec.images[1]: name is a mapping but must be a string; write one "
	       "value after \"name:\"",
	       "types.yaml:8:15: spec.images[1]: source is a list but must be a mapping; write "
	       "url:, checksum: and decompress: under source:",
	       "types.yaml:10:9: spec.images[1]: destination is a list but must be a string; write "
	       "one value after \"destination:\"",
	       "types.yaml:11:19: spec.images[1]: validation is a string but must be a mapping; "
	       "write algorithm: and expected: under validation:",
	       "types.yaml:17:19: image \"b\": updateFile is a string but must be a mapping (or a "
	       "list of them); write path: and replacements: under updateFile:",
	       "types.yaml:24:15: image \"c\": updateFile.path is a list but must be a string; "
	       "write one value after \"path:\"",
	       "types.yaml:26:11: image \"c\": updateFile.replacements is a mapping but must be a "
	       "list; write each replacement as \"- pattern: REGEX\" with \"value: TEXT\" under it",
	       "types.yaml:36:15: image \"d\": updateFile[0].replacements[0] is a string but must "
	       "be a mapping; write \"- pattern: REGEX\" with \"value: TEXT\" under it",
	       "types.yaml:38:22: image \"d\": updateFile[0].replacements[1].value is a list but "
	       "must be a string; write one value after \"value:\"",
	       "types.yaml:39:11: image \"d\": updateFile[1] is a string but must be a mapping; "
	       "write path: and replacements: under it",
	       "types.yaml:41:5: spec.overlays is a mapping but must be a list; write each overlay "
	       "as \"- name: NAME\" with base: and output: under it");
}

static void test_missing(void)
{
	EXPECT("missing.yaml",
	       "missing.yaml:4:9: metadata.name is empty; write \"name: NAME\" under metadata:",
	       "missing.yaml:7:7: spec.images[0]: name is missing; write \"name: NAME\" (unique "
	       "among the images)",
	       "missing.yaml:7:7: spec.images[0]: destination is missing; write \"destination: "
	       "DIR/FILE\" (the image's path in the bucket)",
	       "missing.yaml:8:9: spec.images[0]: source.url is missing; write \"url: "
	       "https://HOST/PATH\" under source:",
	       "missing.yaml:8:9: spec.images[0]: source.checksum is missing; write \"checksum: "
	       "sha256:<64 hex digits>\" under source:",
	       "missing.yaml:8:21: spec.images[0]: source.decompress is gzip but "
	       "validation.expected is missing; add validation.expected: the checksum of the "
	       "decompressed image",
	       "missing.yaml:11:14: image \"b\": source is empty; write \"source:\" with url: and "
	       "checksum: under it",
	       "missing.yaml:12:19: image \"b\": destination is empty; write \"destination: "
	       "DIR/FILE\" (the image's path in the bucket)",
	       "missing.yaml:15:14: image \"c\": source.url is empty; write \"url: "
	       "https://HOST/PATH\" under source:",
	       "missing.yaml:16:19: image \"c\": source.checksum is empty; write \"checksum: "
	       "sha256:<64 hex digits>\" under source:",
	       "missing.yaml:19:9: image \"c\": updateFile.path is missing; write \"path: FILE\" "
	       "(relative to the repository root) under updateFile:",
	       "missing.yaml:20:13: image \"c\": updateFile.replacements[0].pattern is missing; "
	       "write \"pattern: REGEX\" (in single quotes, so that \\ stays as is)",
	       "missing.yaml:21:13: image \"c\": updateFile.replacements[1].value is missing; "
	       "write \"value: TEXT\" (value: \"\" deletes what the pattern matches)",
	       "missing.yaml:23:7: spec.overlays[0]: name is missing; write \"name: NAME\" (unique "
	       "among the overlays)",
	       "missing.yaml:23:7: spec.overlays[0]: base is missing; write \"base: DESTINATION\" "
	       "(the destination of a qcow2 image of spec.images)",
	       "missing.yaml:23:7: spec.overlays[0]: output is missing; write \"output: "
	       "NAME.qcow2\" (a file name inside --overlay-dir)",
	       "missing.yaml:25:12: overlay \"o\": base is empty; write \"base: DESTINATION\" (the "
	       "destination of a qcow2 image of spec.images)",
	       "missing.yaml:26:15: overlay \"o\": output is empty; write \"output: NAME.qcow2\" "
	       "(a "
	       "file name inside --overlay-dir)");
}

static void test_urls(void)
{
	EXPECT("urls.yaml",
	       "urls.yaml:9:14: image \"plain-http\": source.url \"http://example.com/a.qcow2\" "
	       "uses "
	       "plain http; use an https:// URL (downloads must be over TLS)",
	       "urls.yaml:14:14: image \"ftp\": source.url \"ftp://example.com/a.qcow2\" is not an "
	       "https:// URL; write https://HOST/PATH",
	       "urls.yaml:19:14: image \"no-scheme\": source.url \"example.com/a.qcow2\" is not an "
	       "https:// URL; write https://HOST/PATH",
	       "urls.yaml:24:14: image \"hostless\": source.url \"https:///a.qcow2\" has no host; "
	       "write https://HOST/PATH",
	       "urls.yaml:29:14: image \"scheme-only\": source.url \"https://\" has no host; write "
	       "https://HOST/PATH",
	       "urls.yaml:34:14: image \"port-only\": source.url \"https://:443/a.qcow2\" has no "
	       "host; write https://HOST/PATH",
	       "urls.yaml:39:14: image \"userinfo\": source.url contains a user name or password "
	       "(\"...@\"); remove it (credentials in a URL end up in logs)",
	       "urls.yaml:44:14: image \"space\": source.url \"https://example.com/my "
	       "image.qcow2\" "
	       "contains a space or control character; percent-encode it (a space is %20)",
	       "urls.yaml:49:14: image \"bad-port\": source.url "
	       "\"https://example.com:70000/a.qcow2\" has an invalid port; write "
	       "https://HOST:PORT/PATH",
	       "urls.yaml:54:14: image \"upper\": source.url \"HTTPS://example.com/a.qcow2\" "
	       "spells the scheme in upper case; write \"https://\"",
	       "urls.yaml:59:14: image \"bad-host\": source.url \"https://exa$mple.com/a.qcow2\" "
	       "has an invalid host name; use letters, digits, \"-\" and \".\" (write "
	       "international names in their xn-- form)");
}

static void test_checksums(void)
{
	EXPECT("checksums.yaml",
	       "checksums.yaml:10:19: image \"short\": source.checksum has 3 hex digits after "
	       "\"sha256:\"; a sha256 checksum has 64",
	       "checksums.yaml:15:19: image \"not-hex\": source.checksum contains \"g\", which is "
	       "not a hex digit; write sha256: followed by 64 hex digits",
	       "checksums.yaml:20:19: image \"no-prefix\": source.checksum has no algorithm; write "
	       "\"sha256:\" before the 64 hex digits",
	       "checksums.yaml:25:19: image \"md5\": source.checksum uses the algorithm \"md5\"; "
	       "use "
	       "sha256:<64 hex digits> or sha512:<128 hex digits>",
	       "checksums.yaml:30:19: image \"upper\": source.checksum spells the algorithm in "
	       "upper case; write \"sha512:\"",
	       "checksums.yaml:35:19: image \"sha512-short\": source.checksum has 64 hex digits "
	       "after \"sha512:\"; a sha512 checksum has 128",
	       "checksums.yaml:43:20: image \"bad-algorithm\": validation.algorithm is \"sha1\"; "
	       "use "
	       "sha256 or sha512",
	       "checksums.yaml:51:20: image \"algorithm-vs-expected\": validation.algorithm is "
	       "sha512 but validation.expected is a sha256 checksum; make them agree",
	       "checksums.yaml:59:20: image \"algorithm-vs-source\": validation.algorithm is "
	       "sha512 "
	       "but source.checksum is a sha256 checksum; make them agree (or add "
	       "validation.expected)",
	       "checksums.yaml:64:21: image \"bad-decompress\": source.decompress is \"bzip2\"; "
	       "use "
	       "xz, gzip, zstd or none",
	       "checksums.yaml:70:21: image \"decompress-without-expected\": source.decompress is "
	       "gzip but validation.expected is missing; add validation.expected: the checksum of "
	       "the decompressed image",
	       "checksums.yaml:80:19: image \"expected-differs\": validation.expected differs from "
	       "source.checksum, but nothing is decompressed (the stored bytes are the downloaded "
	       "bytes); correct one of them or remove validation.expected",
	       "checksums.yaml:88:19: image \"expected-bad\": validation.expected has 2 hex digits "
	       "after \"sha256:\"; a sha256 checksum has 64");
}

static void test_destinations(void)
{
	EXPECT("destinations.yaml",
	       "destinations.yaml:11:20: image \"leading-slash\": destination \"/dir/a.qcow2\" "
	       "starts with \"/\"; write it relative to images/ in the bucket, like "
	       "\"dir/a.qcow2\"",
	       "destinations.yaml:16:20: image \"trailing-slash\": destination \"dir/\" ends with "
	       "\"/\"; name a file, like \"dir/IMAGE.qcow2\"",
	       "destinations.yaml:21:20: image \"dotdot\": destination \"dir/../a.qcow2\" has a "
	       "\"..\" segment; write the path without it",
	       "destinations.yaml:26:20: image \"empty-segment\": destination \"dir//a.qcow2\" has "
	       "an empty path segment (\"//\"); remove the extra \"/\"",
	       "destinations.yaml:31:20: image \"dot-segment\": destination \"./a.qcow2\" has a "
	       "\".\" segment; remove it",
	       "destinations.yaml:36:20: image \"control\": destination \"dir/a\\x01.qcow2\" "
	       "contains a control character; remove it",
	       "destinations.yaml:41:20: image \"backslash\": destination \"dir\\\\a.qcow2\" "
	       "contains a backslash; separate directories with \"/\"",
	       "destinations.yaml:46:20: image \"too-long\": destination is 1025 bytes long; the "
	       "limit is 1024",
	       "destinations.yaml:51:20: image \"long-segment\": destination has a path segment "
	       "longer than 255 bytes; shorten it",
	       "destinations.yaml:56:20: image \"reserved\": destination \".imgstore/stats\" is "
	       "inside .imgstore/, which imgfs reserves for its control files; choose another "
	       "directory",
	       "destinations.yaml:66:20: image \"second\": destination \"shared/a.qcow2\" is "
	       "already used by the image at line 61; give each image its own destination",
	       "destinations.yaml:67:13: image \"first\": name \"first\" is already used by the "
	       "image at line 57; give each image a unique name",
	       "destinations.yaml:81:20: image \"file-in-dir\": destination \"parent/child.qcow2\" "
	       "puts a file under \"parent\", which is the destination of the image at line 76; "
	       "rename one of them",
	       "destinations.yaml:82:13: image \"bad\\tname\": name \"bad\\tname\" contains "
	       "whitespace or a control character; use letters, digits, \"-\", \".\" and \"_\"");
}

static void test_update_files(void)
{
	EXPECT("update_files.yaml",
	       "update_files.yaml:13:17: image \"paths\": updateFile[0].path \"/etc/hosts\" is "
	       "absolute; write it relative to the repository root (the directory that contains "
	       "images/)",
	       "update_files.yaml:17:17: image \"paths\": updateFile[1].path \"../outside.hcl\" "
	       "leads outside the repository; name a file inside it, relative to its root",
	       "update_files.yaml:19:17: image \"paths\": updateFile[2].path "
	       "\"a/../../outside.hcl\" leads outside the repository; name a file inside it, "
	       "relative to its root",
	       "update_files.yaml:21:17: image \"paths\": updateFile[3].path \".git/config\" is "
	       "inside .git; name a file of the working tree",
	       "update_files.yaml:23:17: image \"paths\": updateFile[4].path "
	       "\"sub/.Git/hooks/pre-commit\" is inside .git; name a file of the working tree",
	       "update_files.yaml:25:17: image \"paths\": updateFile[5].path \"dir/\" ends with "
	       "\"/\"; name a file",
	       "update_files.yaml:27:17: image \"paths\": updateFile[6].path \"a/..\" names the "
	       "repository root, not a file; name a file",
	       "update_files.yaml:39:22: image \"patterns\": updateFile.replacements[0].pattern "
	       "does not compile: missing closing parenthesis at offset 14; fix the regular "
	       "expression (RE2/Go syntax, e.g. name\\s*=\\s*\"[^\"]*\")",
	       "update_files.yaml:41:22: image \"patterns\": updateFile.replacements[1].pattern "
	       "does not compile: range out of order in character class at offset 3; fix the "
	       "regular expression (RE2/Go syntax, e.g. name\\s*=\\s*\"[^\"]*\")",
	       "update_files.yaml:43:22: image \"patterns\": updateFile.replacements[2].pattern "
	       "\"x*\" can match an empty string, which would insert the value at every such "
	       "place; make it match at least one character",
	       "update_files.yaml:45:22: image \"patterns\": updateFile.replacements[3].pattern is "
	       "empty; write \"pattern: REGEX\" (in single quotes, so that \\ stays as is)",
	       "update_files.yaml:49:22: image \"patterns\": updateFile.replacements[5].pattern "
	       "does not compile: numbers out of order in {} quantifier at offset 5; fix the "
	       "regular expression (RE2/Go syntax, e.g. name\\s*=\\s*\"[^\"]*\")",
	       "update_files.yaml:60:20: image \"templates\": updateFile.replacements[0].value "
	       "uses "
	       "the unknown template variable \"{{ .Source.Url }}\"; did you mean \"{{ .Source.URL "
	       "}}\"?",
	       "update_files.yaml:62:20: image \"templates\": updateFile.replacements[1].value "
	       "uses "
	       "the unknown template variable \"{{ .Version }}\"; use {{ .Source.URL }}, {{ "
	       ".Source.Checksum }}, {{ .Name }} or {{ .Destination }}",
	       "update_files.yaml:64:20: image \"templates\": updateFile.replacements[2].value has "
	       "\"{{\" without a closing \"}}\"; close it or remove the braces",
	       "update_files.yaml:68:20: image \"templates\": updateFile.replacements[4].value "
	       "uses "
	       "the unknown template variable \"{{ name }}\"; did you mean \"{{ .Name }}\"?",
	       "update_files.yaml:76:23: image \"empty-replacements\": updateFile.replacements is "
	       "empty; add at least one \"- pattern: REGEX\" with its \"value: TEXT\"");
}

static void test_overlays(void)
{
	EXPECT("overlays.yaml",
	       "overlays.yaml:24:13: overlay \"wg\": name \"wg\" is already used by the overlay at "
	       "line 21; give each overlay a unique name",
	       "overlays.yaml:25:13: overlay \"wg\": base \"alpine/base.qcow\" is not the "
	       "destination of any image; did you mean \"alpine/base.qcow2\"?",
	       "overlays.yaml:26:15: overlay \"wg\": output \"wg.qcow2\" is already used by the "
	       "overlay at line 23; give each overlay its own output",
	       "overlays.yaml:28:13: overlay \"by-name-raw\": base \"talos\" is an image whose "
	       "destination \"talos/talos.raw\" is not a .qcow2 file; overlays need a qcow2 base",
	       "overlays.yaml:31:13: overlay \"by-dest-raw\": base \"talos/talos.raw\" is not a "
	       ".qcow2 file; overlays need the destination of a qcow2 image",
	       "overlays.yaml:34:13: overlay \"nowhere\": base \"ubuntu/noble.qcow2\" is not the "
	       "destination of any image; use the destination of a qcow2 image of spec.images",
	       "overlays.yaml:38:15: overlay \"bad-outputs\": output \"sub/d.qcow2\" contains a "
	       "directory; write a plain file name (it is created in --overlay-dir)",
	       "overlays.yaml:41:15: overlay \"not-qcow2\": output \"e.img\" does not end in "
	       ".qcow2; name it like NAME.qcow2",
	       "overlays.yaml:44:15: overlay \"bare-suffix\": output \".qcow2\" has no name before "
	       ".qcow2; name it like NAME.qcow2",
	       "overlays.yaml:48:16: overlay \"lists\": variant is a list but must be a string; "
	       "write one value after \"variant:\"",
	       "overlays.yaml:49:17: overlay \"lists\": packages is a string but must be a list; "
	       "write [a, b] or one \"- item\" per line",
	       "overlays.yaml:50:22: overlay \"lists\": services[1] is a mapping but must be a "
	       "string; write one name per entry",
	       "overlays.yaml:50:30: overlay \"lists\": services[2] is empty; remove it or write a "
	       "name",
	       "overlays.yaml:50:34: overlay \"lists\": services[3] is empty; remove it or write a "
	       "name",
	       "overlays.yaml:51:7: spec.overlays[9] is a string but must be a mapping; write each "
	       "overlay as \"- name: NAME\" with base: and output: under it");
}

static void test_yaml_level(void)
{
	EXPECT("syntax.yaml",
	       "syntax.yaml:10:8: invalid YAML: did not find expected key while parsing a block "
	       "mapping (line 7, column 7); check the indentation and quoting");
	/* An alias repeats a value: repeating a whole image is caught where the alias is. */
	EXPECT("aliases.yaml",
	       "aliases.yaml:17:7: image \"a\": name \"a\" is already used by the image at line 9; "
	       "give each image a unique name",
	       "aliases.yaml:17:7: image \"a\": destination \"a.qcow2\" is already used by the "
	       "image at line 13; give each image its own destination");
}

/* ---- manifests from memory ---------------------------------------------- */

/* Load a buffer that must be invalid with exactly one problem, formatted. */
static void expect_buffer(const char *doc, size_t len, const char *want)
{
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	char *got;
	CHECK(manifest_load_buffer(doc, len, "mem", &m, &p, &e) == -1);
	CHECK(m == NULL && e.code == ERR_INVALID);
	CHECK(p.n == 1);
	got = p.n ? mf_problem_format(&p, 0) : NULL;
	CHECK_STR(got, want);
	free(got);
	mf_problems_free(&p);
}

#define HEAD "apiVersion: images.lab.gilman.io/v1alpha1\nkind: ImageManifest\nmetadata: {name: x}\n"

static void test_buffers(void)
{
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	char *big;

	expect_buffer("", 0,
	              "mem:1:1: the manifest is empty; start it with \"apiVersion: "
	              "images.lab.gilman.io/v1alpha1\"");
	expect_buffer("# only a comment\n", 17,
	              "mem:1:1: the manifest is empty; start it with \"apiVersion: "
	              "images.lab.gilman.io/v1alpha1\"");
	expect_buffer("a: 1\n---\nb: 2\n", 14,
	              "mem:2:1: the manifest holds more than one YAML document (a second \"---\"); "
	              "keep a single document");
	expect_buffer("a: &r [*r]\n", 11,
	              "mem:1:8: alias \"*r\" refers to no complete anchor before it; define \"&r\" "
	              "earlier (an alias cannot refer to a node that contains it)");
	expect_buffer("a: *nope\n", 9,
	              "mem:1:4: alias \"*nope\" refers to no complete anchor before it; define "
	              "\"&nope\" earlier (an alias cannot refer to a node that contains it)");
	expect_buffer("a: \"x\xff\"\n", 8,
	              "mem:1:6: invalid YAML: invalid leading UTF-8 octet (byte 0xff at offset 5); "
	              "save the manifest as UTF-8 text");
	{
		static const char nul[] = HEAD "spec:\n  images:\n    - name: \"a\\0b\"\n"
		                               "      source: {url: https://x/a, checksum: "
		                               "'sha256:11111111111111111111111111111111111111111"
		                               "11111111111111111111111'}\n      destination: a\n";
		expect_buffer(nul, strlen(nul),
		              "mem:6:13: spec.images[0]: name contains a NUL character; remove it");
	}
	{
		static const char key[] = HEAD "spec: {}\n? [a]\n: b\n";
		expect_buffer(key, strlen(key),
		              "mem:5:3: a key is a list; keys must be plain names, like \"name:\"");
	}

	/* "Billion laughs": aliases may not blow the document up. */
	{
		char doc[4096];
		size_t o = (size_t)snprintf(doc, sizeof(doc), "%sa0: &a0 [x,x,x,x,x,x,x,x,x,x]\n",
		                            HEAD);
		for (int i = 1; i < 8; i++) {
			o += (size_t)snprintf(doc + o, sizeof(doc) - o, "a%d: &a%d [", i, i);
			for (int j = 0; j < 10; j++)
				o += (size_t)snprintf(doc + o, sizeof(doc) - o, "%s*a%d",
				                      j ? "," : "", i - 1);
			o += (size_t)snprintf(doc + o, sizeof(doc) - o, "]\n");
		}
		expect_buffer(
		        doc, o,
		        "mem:8:38: the manifest has more than 100000 YAML nodes (counting every "
		        "alias expanded); split it or use fewer aliases");
	}

	/* Too large to be a manifest. */
	big = malloc(MF_MAX_FILE_SIZE + 1);
	if (big) {
		memset(big, '#', MF_MAX_FILE_SIZE + 1);
		expect_buffer(
		        big, MF_MAX_FILE_SIZE + 1,
		        "mem:1:1: the manifest is 4194305 bytes long; the limit is 4194304 bytes");
		free(big);
	}

	/* Without a problem list the error still counts them; the label defaults. */
	CHECK(manifest_load_buffer("x: 1\n", 5, NULL, &m, NULL, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK_STR(e.msg, "<manifest>: invalid manifest (5 problems)");
	/* A problem list is emptied before it is reused. */
	CHECK(manifest_load_buffer("x: 1\n", 5, "one", &m, &p, &e) == -1 && p.n == 5);
	CHECK(manifest_load_buffer("x: 1\n", 5, "two", &m, &p, &e) == -1 && p.n == 5);
	CHECK_STR(p.file, "two");
	CHECK_STR(e.msg, "two: invalid manifest (5 problems)");
	{
		char *text = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);
		if (f) {
			mf_problems_print(f, &p);
			fclose(f);
			CHECK_STR(text, "two:1:1: unknown key \"x\"; remove it (known keys: "
			                "apiVersion, kind, metadata, spec)\n"
			                "two:1:1: apiVersion is missing; write \"apiVersion: "
			                "images.lab.gilman.io/v1alpha1\"\n"
			                "two:1:1: kind is missing; write \"kind: ImageManifest\"\n"
			                "two:1:1: metadata is missing; write \"metadata:\" with "
			                "\"name: NAME\" "
			                "under it\n"
			                "two:1:1: spec is missing; write \"spec:\" with "
			                "\"images:\" under it\n");
			free(text);
		}
	}
	mf_problems_free(&p);
	mf_problems_free(&p); /* twice is fine */
}

static void test_files(void)
{
	struct manifest *m = NULL;
	struct mf_problems p = MF_PROBLEMS_INIT;
	struct err e = {0};
	CHECK(manifest_load("does-not-exist.yaml", &m, &p, &e) == -1);
	CHECK(e.code == ERR_NOTFOUND && m == NULL && p.n == 0);
	CHECK_STR(e.msg, "reading the manifest: does-not-exist.yaml: No such file or directory");
	CHECK(manifest_load(".", &m, &p, &e) == -1);
	CHECK(e.code == ERR_IO);
	CHECK_STR(e.msg, "the manifest . is not a regular file");
	mf_problems_free(&p);
}

/* ---- repo root ------------------------------------------------------------ */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static void test_repo_root(void)
{
	char tmpl[] = "/tmp/test_manifest.XXXXXX", *dir = mkdtemp(tmpl), *real = NULL;
	char path[PATH_MAX], want[PATH_MAX], cwd[PATH_MAX], *root = NULL;
	struct err e = {0};
	CHECK(dir != NULL);
	if (!dir || !getcwd(cwd, sizeof(cwd)))
		return;
	real = realpath(dir, NULL);
	snprintf(path, sizeof(path), "%s/repo", dir);
	CHECK(mkdir(path, 0700) == 0);
	snprintf(path, sizeof(path), "%s/repo/images", dir);
	CHECK(mkdir(path, 0700) == 0);
	snprintf(path, sizeof(path), "%s/repo/ci", dir);
	CHECK(mkdir(path, 0700) == 0);
	snprintf(path, sizeof(path), "%s/repo/images/images.yaml", dir);
	write_file(path, "x: 1\n");
	snprintf(want, sizeof(want), "%s/repo", real);

	CHECK(manifest_repo_root(path, &root, &e) == 0);
	CHECK_STR(root, want);
	free(root);
	/* Wherever it lives: the parent of its directory. */
	snprintf(path, sizeof(path), "%s/repo/ci/../ci/other.yaml", dir);
	CHECK(manifest_repo_root(path, &root, &e) == 0);
	CHECK_STR(root, want);
	free(root);
	/* Relative paths are resolved against the working directory. */
	snprintf(path, sizeof(path), "%s/repo/images", dir);
	CHECK(chdir(path) == 0);
	CHECK(manifest_repo_root("images.yaml", &root, &e) == 0);
	CHECK_STR(root, want);
	free(root);
	CHECK(manifest_repo_root("./images.yaml", &root, &e) == 0);
	CHECK_STR(root, want);
	free(root);
	CHECK(chdir(cwd) == 0);
	/* The top of the file system is its own parent. */
	CHECK(manifest_repo_root("/images.yaml", &root, &e) == 0);
	CHECK_STR(root, "/");
	free(root);
	/* A directory that does not exist. */
	snprintf(path, sizeof(path), "%s/nope/images.yaml", dir);
	CHECK(manifest_repo_root(path, &root, &e) == -1);
	CHECK(root == NULL && e.code == ERR_NOTFOUND);

	snprintf(path, sizeof(path), "%s/repo/images/images.yaml", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/repo/images", dir);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/repo/ci", dir);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/repo", dir);
	rmdir(path);
	rmdir(dir);
	free(real);
}

/* ---- destinations on their own ------------------------------------------ */

static void test_check_destination(void)
{
	struct err e = {0};
	CHECK(mf_check_destination("talos/talos-1.9.1-amd64.raw", &e) == 0);
	CHECK(mf_check_destination("a", &e) == 0);
	CHECK(mf_check_destination(".hidden/a..b/c.d", &e) == 0);
	CHECK(mf_check_destination("/a", &e) == -1 && e.code == ERR_INVALID);
	CHECK_STR(e.msg,
	          "destination \"/a\" starts with \"/\"; write it relative to images/ in the "
	          "bucket, like \"a\"");
	CHECK(mf_check_destination("", &e) == -1);
	CHECK_STR(e.msg, "destination is empty; write a path such as DIR/FILE.qcow2");
	CHECK(mf_check_destination("a/..", &e) == -1);
	CHECK(mf_check_destination("..", &e) == -1);
	CHECK(mf_check_destination("a/./b", &e) == -1);
	CHECK(mf_check_destination("a\nb", &e) == -1);
	CHECK(mf_check_destination("a\x7f", &e) == -1);
	CHECK(mf_check_destination(".imgstore", &e) == 0); /* a file, not the directory */
	CHECK(mf_check_destination(".imgstore/by-sha256/x", &e) == -1);
	CHECK_STR(mf_decompress_name(MF_DECOMPRESS_NONE), "none");
	CHECK_STR(mf_decompress_name(MF_DECOMPRESS_XZ), "xz");
	CHECK_STR(mf_decompress_name(MF_DECOMPRESS_GZIP), "gzip");
	CHECK_STR(mf_decompress_name(MF_DECOMPRESS_ZSTD), "zstd");
}

/* ---- templates -------------------------------------------------------- */

static struct mf_image sample_image(void)
{
	struct mf_image img;
	memset(&img, 0, sizeof(img));
	img.name = "talos-1.9.1";
	img.source.url = "https://factory.talos.dev/x/metal-amd64.raw.xz";
	img.source.checksum = (char *)CK1;
	img.destination = "talos/talos-1.9.1.raw";
	return img;
}

static void expect_expand(const struct mf_image *img, const char *tmpl, const char *want)
{
	char *out = NULL;
	struct err e = {0};
	CHECK(mf_expand_template(img, tmpl, &out, &e) == 0);
	CHECK_STR(out, want);
	free(out);
}

static void test_templates(void)
{
	struct mf_image img = sample_image(), empty;
	char *out = (char *)1;
	struct err e = {0};

	expect_expand(&img, "url = \"{{ .Source.URL }}\"",
	              "url = \"https://factory.talos.dev/x/metal-amd64.raw.xz\"");
	expect_expand(&img, "{{.Source.Checksum}}|{{  .Name\t}}|{{\n.Destination }}",
	              "sha256:1111111111111111111111111111111111111111111111111111111111111111|"
	              "talos-1.9.1|talos/talos-1.9.1.raw");
	expect_expand(&img, "{{ .Name }}{{ .Name }}", "talos-1.9.1talos-1.9.1");
	expect_expand(&img, "plain $1 \\1 ${x} text", "plain $1 \\1 ${x} text");
	expect_expand(&img, "a }} b { c", "a }} b { c");
	expect_expand(&img, "", "");
	memset(&empty, 0, sizeof(empty));
	expect_expand(&empty, "[{{ .Name }}]", "[]");

	CHECK(mf_expand_template(&img, "x {{ .Foo }}", &out, &e) == -1);
	CHECK(out == NULL && e.code == ERR_INVALID);
	CHECK_STR(e.msg,
	          "the value uses the unknown template variable \"{{ .Foo }}\"; use {{ "
	          ".Source.URL }}, {{ .Source.Checksum }}, {{ .Name }} or {{ .Destination }}");
	CHECK(mf_expand_template(&img, "{{ .source.url }}", &out, &e) == -1);
	CHECK_STR(e.msg, "the value uses the unknown template variable \"{{ .source.url }}\"; did "
	                 "you mean \"{{ .Source.URL }}\"?");
	CHECK(mf_expand_template(&img, "{{ .Name }} {{ .Name", &out, &e) == -1);
	CHECK_STR(e.msg,
	          "the value has \"{{\" without a closing \"}}\"; close it or remove the braces");
	CHECK(mf_expand_template(&img, "{{- .Name }}", &out, &e) == -1);
	CHECK(mf_expand_template(&img, "{{}}", &out, &e) == -1);
}

/* ---- replacements ----------------------------------------------------- */

static void test_replacements_from_manifest(void)
{
	struct manifest *m = NULL;
	struct mf_apply_result r;
	struct err e = {0};
	static const char hcl[] = "talos_image_url = \"https://old/x.raw.xz\"\n"
	                          "other = \"talos_image_url\"\n"
	                          "talos_image_checksum   =   \"sha256:old\"\n"
	                          "talos_image_url=\"second\"\n";
	static const char want[] =
	        "talos_image_url = "
	        "\"https://factory.talos.dev/image/abc/v1.9.1/metal-amd64.raw.xz\"\n"
	        "other = \"talos_image_url\"\n"
	        "talos_image_checksum = "
	        "\"sha256:1111111111111111111111111111111111111111111111111111111111111111\"\n"
	        "talos_image_url = "
	        "\"https://factory.talos.dev/image/abc/v1.9.1/metal-amd64.raw.xz\"\n";
	char *again;

	CHECK(manifest_load("valid_full.yaml", &m, NULL, &e) == 0);
	if (!m)
		return;
	/* Several matches of one pattern; two patterns in order. */
	CHECK(mf_apply_replacements(&m->images[0], &m->images[0].update_files[0], hcl, strlen(hcl),
	                            &r, &e) == 0);
	CHECK_STR(r.text, want);
	CHECK(r.len == strlen(want));
	CHECK(r.changed == 1);
	CHECK(r.nmatches == 2 && r.matches[0] == 2 && r.matches[1] == 1);
	/* Applying again changes nothing although the patterns match. */
	again = strdup(r.text);
	mf_apply_result_free(&r);
	CHECK(mf_apply_replacements(&m->images[0], &m->images[0].update_files[0], again,
	                            strlen(again), &r, &e) == 0);
	CHECK(r.changed == 0);
	CHECK_STR(r.text, want);
	CHECK(r.matches[0] == 2 && r.matches[1] == 1);
	mf_apply_result_free(&r);
	free(again);
	/* No match: the text as it was. */
	CHECK(mf_apply_replacements(&m->images[0], &m->images[0].update_files[0], "nothing\n", 8,
	                            &r, &e) == 0);
	CHECK(r.changed == 0 && r.len == 8);
	CHECK_STR(r.text, "nothing\n");
	CHECK(r.matches[0] == 0 && r.matches[1] == 0);
	mf_apply_result_free(&r);
	/* (?i), (?P<name>), \s; "$1", "\1" and "${old}" in the value stay literal. */
	CHECK(mf_apply_replacements(&m->images[2], &m->images[2].update_files[0],
	                            "x\nAlpine_Name  = \"old\"\n", 23, &r, &e) == 0);
	CHECK_STR(r.text, "x\nalpine_name = \"alpine.3_21\" # $1 \\1 ${old}\n");
	CHECK(r.changed == 1);
	mf_apply_result_free(&r);
	/* (?m)^...$ and an empty value delete whole lines' content. */
	CHECK(mf_apply_replacements(&m->images[2], &m->images[2].update_files[1],
	                            "a\nimage = 42\nimage=7\nimage = x\n", 31, &r, &e) == 0);
	CHECK_STR(r.text, "a\n\n\nimage = x\n");
	CHECK(r.matches[0] == 2);
	mf_apply_result_free(&r);
	manifest_free(m);
}

/* Apply one hand-made replacement; returns the call's result. */
static int apply_one(const char *pattern, const char *value, const char *text, size_t len,
                     struct mf_apply_result *r, struct err *e)
{
	struct mf_image img = sample_image();
	struct mf_replacement rep = {(char *)pattern, (char *)value, {0, 0}};
	struct mf_update_file uf = {"f.hcl", &rep, 1, {0, 0}};
	return mf_apply_replacements(&img, &uf, text, len, r, e);
}

static void test_replacements_literal(void)
{
	struct mf_apply_result r;
	struct err e = {0};
	char *text;

	/* Dollars and backslashes in the value are never interpreted. */
	CHECK(apply_one("v = \"([^\"]*)\"", "v = \"$1 $0 ${1} $$ \\1 \\\\ \\n & {{ .Name }}\"",
	                "v = \"old\"\n", 10, &r, &e) == 0);
	CHECK_STR(r.text, "v = \"$1 $0 ${1} $$ \\1 \\\\ \\n & talos-1.9.1\"\n");
	mf_apply_result_free(&r);
	/* The expanded checksum is the source checksum as written. */
	CHECK(apply_one("sum=\\S+", "sum={{ .Source.Checksum }}", "sum=x", 5, &r, &e) == 0);
	CHECK_STR(r.text,
	          "sum=sha256:1111111111111111111111111111111111111111111111111111111111111111");
	mf_apply_result_free(&r);
	/* "$" is the very end of the text (Go), not before a final newline. */
	CHECK(apply_one("x$", "y", "x\n", 2, &r, &e) == 0);
	CHECK(r.changed == 0 && r.matches[0] == 0);
	mf_apply_result_free(&r);
	CHECK(apply_one("(?m)x$", "y", "x\nx", 3, &r, &e) == 0);
	CHECK_STR(r.text, "y\ny");
	mf_apply_result_free(&r);
	/* Bytes that are not UTF-8, and NULs, pass through. */
	CHECK(apply_one("old", "new", "\xff\xfe old \xc3(\0old", 13, &r, &e) == 0);
	CHECK(r.len == 13 && !memcmp(r.text, "\xff\xfe new \xc3(\0new", 13));
	CHECK(r.matches[0] == 2 && r.changed == 1);
	mf_apply_result_free(&r);
	/* Unicode: "." is one character. */
	CHECK(apply_one("n.m", "X", "n\xc3\xa9m", 4, &r, &e) == 0);
	CHECK_STR(r.text, "X");
	mf_apply_result_free(&r);
	/* Output much longer than the input (the buffer grows). */
	text = malloc(1000);
	if (text) {
		memset(text, 'a', 1000);
		CHECK(apply_one("a", "bbbbbbbbbb", text, 1000, &r, &e) == 0);
		CHECK(r.len == 10000 && r.matches[0] == 1000 && r.text[9999] == 'b' &&
		      r.text[10000] == '\0');
		mf_apply_result_free(&r);
		free(text);
	}
	/* Empty text. */
	CHECK(apply_one("a", "b", "", 0, &r, &e) == 0);
	CHECK(r.len == 0 && r.changed == 0 && r.text && r.text[0] == '\0');
	mf_apply_result_free(&r);

	/* Failures: the caller gets ERR_INVALID and a result that is safe to free. */
	CHECK(apply_one("(", "x", "a", 1, &r, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK_STR(e.msg, "updateFile f.hcl: replacements[0].pattern does not compile: missing "
	                 "closing parenthesis at offset 1; fix the regular expression (RE2/Go "
	                 "syntax, e.g. name\\s*=\\s*\"[^\"]*\")");
	mf_apply_result_free(&r);
	CHECK(apply_one("a", "{{ .X }}", "a", 1, &r, &e) == -1);
	CHECK(e.code == ERR_INVALID);
	CHECK_STR(e.msg, "updateFile f.hcl: replacements[0]: the value uses the unknown template "
	                 "variable \"{{ .X }}\"; use {{ .Source.URL }}, {{ .Source.Checksum }}, {{ "
	                 ".Name }} or {{ .Destination }}");
	mf_apply_result_free(&r);
	/* Catastrophic backtracking stops at the match limit instead of hanging. */
	CHECK(apply_one("(a+)+$", "x", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", 40, &r, &e) ==
	      -1);
	CHECK(e.code == ERR_INVALID);
	CHECK_STR(e.msg, "updateFile f.hcl: replacements[0].pattern: match limit exceeded; "
	                 "simplify the pattern");
	mf_apply_result_free(&r);
}

/* spec.retention, an image's retention (overrides the keys it names) and
 * spec.uploads (the longest prefix applies) */
static void test_retention(void)
{
	static const char doc[] =
	        "apiVersion: images.lab.gilman.io/v1alpha1\nkind: ImageManifest\n"
	        "metadata: {name: x}\nspec:\n"
	        "  retention: {keepDays: 7}\n"
	        "  uploads:\n    - {prefix: vyos/, keep: 5, keepDays: 30}\n"
	        "    - {prefix: vyos/old/, keepDays: 1}\n"
	        "  images:\n"
	        "    - name: a\n      source: {url: 'https://e.org/a', checksum: 'sha256:"
	        "1111111111111111111111111111111111111111111111111111111111111111'}\n"
	        "      destination: a.raw\n"
	        "    - name: b\n      source: {url: 'https://e.org/b', checksum: 'sha256:"
	        "1111111111111111111111111111111111111111111111111111111111111111'}\n"
	        "      destination: b.raw\n      retention: {keepVersions: 3}\n";
	struct manifest *m = NULL;
	struct err e = {0};
	CHECK(manifest_load_buffer(doc, strlen(doc), "r", &m, NULL, &e) == 0);
	if (!m)
		return;
	CHECK(m->retention.keep_versions == 1 && m->retention.keep_days == 7);
	CHECK(m->images[0].retention.keep_versions == 1 && m->images[0].retention.keep_days == 7);
	CHECK(m->images[1].retention.keep_versions == 3 && m->images[1].retention.keep_days == 7);
	CHECK(m->nuploads == 2 && m->uploads[0].keep == 5 && m->uploads[0].keep_days == 30);
	CHECK(manifest_upload_rule(m, "vyos/a.raw") == &m->uploads[0]);
	CHECK(manifest_upload_rule(m, "vyos/old/a.raw") == &m->uploads[1]);
	CHECK(manifest_upload_rule(m, "other/a.raw") == NULL);
	CHECK(m->uploads[1].keep == 0 && m->uploads[1].keep_days == 1);
	manifest_free(m);
	e = (struct err){0};
	CHECK(mf_check_destination("versions/x.raw", &e) == -1);
	CHECK(strstr(e.msg, "inside versions/") != NULL);
	CHECK(mf_check_destination("versionsx/x.raw", &e) == 0);
}

int main(void)
{
	const char *root = getenv("SOURCE_ROOT");
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/tests/unit/manifests", root ? root : ".");
	if (chdir(dir)) {
		fprintf(stderr, "test_manifest: cannot enter %s: %s\n", dir, strerror(errno));
		return 1;
	}
	test_valid_full();
	test_repo_example();
	test_empty_images();
	test_header();
	test_unknown_keys();
	test_types();
	test_missing();
	test_urls();
	test_checksums();
	test_destinations();
	test_update_files();
	test_overlays();
	test_yaml_level();
	test_buffers();
	test_files();
	test_repo_root();
	test_check_destination();
	test_templates();
	test_replacements_from_manifest();
	test_replacements_literal();
	test_retention();
	return check_report("manifest");
}
