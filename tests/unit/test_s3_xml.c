/* S3 XML: responses as AWS and Swift's s3api send them, and the two bodies
 * we build. */
#include "check.h"
#include "store/s3/s3_xml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NS "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\""

static void test_error(void)
{
	const char *x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>"
	                "SignatureDoesNotMatch</Code><Message>The request signature we "
	                "calculated does not match\nthe signature you provided.</Message>"
	                "<StringToSign>AWS4...</StringToSign></Error>";
	char code[64], msg[256];
	CHECK(s3_xml_error(x, strlen(x), code, sizeof(code), msg, sizeof(msg)) == 0);
	CHECK_STR(code, "SignatureDoesNotMatch");
	CHECK_STR(msg, "The request signature we calculated does not match the signature you "
	               "provided.");
	CHECK(s3_xml_error("<html>oops</html>", 17, code, sizeof(code), msg, sizeof(msg)) == -1);
	CHECK(s3_xml_error("not xml", 7, code, sizeof(code), msg, sizeof(msg)) == -1);
	CHECK(s3_xml_error("", 0, code, sizeof(code), msg, sizeof(msg)) == -1);
	/* truncation */
	CHECK(s3_xml_error(x, strlen(x), code, 5, msg, 4) == 0);
	CHECK_STR(code, "Sign");
	CHECK_STR(msg, "The");
}

static void test_list(void)
{
	const char *p1 =
	        "<?xml version='1.0' encoding='UTF-8'?>\n<ListBucketResult " NS ">"
	        "<Name>b</Name><Prefix>images/</Prefix><KeyCount>2</KeyCount>"
	        "<MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>"
	        "<NextContinuationToken>tok+/=</NextContinuationToken>"
	        "<Contents><Key>images/a &amp; b.qcow2</Key>"
	        "<LastModified>2024-12-20T10:00:00.000Z</LastModified>"
	        "<ETag>&quot;abc&quot;</ETag><Size>1234567890123</Size>"
	        "<StorageClass>STANDARD</StorageClass></Contents>"
	        "<CommonPrefixes><Prefix>images/alpine/</Prefix></CommonPrefixes>"
	        "</ListBucketResult>";
	const char *p2 = "<ListBucketResult " NS "><IsTruncated>false</IsTruncated>"
	                 "<Contents><Key>images/\xc3\xa9</Key><ETag>\"d-2\"</ETag><Size>0</Size>"
	                 "</Contents></ListBucketResult>";
	struct s3_xml_list acc = {0};
	struct err e = {0};
	CHECK(s3_xml_parse_list(p1, strlen(p1), &acc, &e) == 0);
	CHECK(acc.truncated == 1);
	CHECK_STR(acc.next_token, "tok+/=");
	CHECK(acc.nobjs == 1 && acc.nprefixes == 1);
	if (acc.nobjs == 1) {
		CHECK_STR(acc.objs[0].key, "images/a & b.qcow2");
		CHECK_STR(acc.objs[0].etag, "\"abc\"");
		CHECK(acc.objs[0].size == 1234567890123ULL);
		CHECK(acc.objs[0].mtime == 1734688800);
	}
	if (acc.nprefixes == 1)
		CHECK_STR(acc.prefixes[0], "images/alpine/");
	CHECK(s3_xml_parse_list(p2, strlen(p2), &acc, &e) == 0);
	CHECK(acc.truncated == 0 && acc.next_token == NULL);
	CHECK(acc.nobjs == 2);
	if (acc.nobjs == 2)
		CHECK_STR(acc.objs[1].key, "images/\xc3\xa9");
	CHECK(s3_xml_parse_list("<Error/>", 8, &acc, &e) == -1);
	CHECK(e.code == ERR_SERVER);
	s3_xml_list_free(&acc);
}

static void test_uploads(void)
{
	const char *x = "<ListMultipartUploadsResult " NS "><Bucket>b</Bucket>"
	                "<NextKeyMarker>k2</NextKeyMarker><NextUploadIdMarker>u2"
	                "</NextUploadIdMarker><IsTruncated>true</IsTruncated>"
	                "<Upload><Key>k1</Key><UploadId>u1</UploadId>"
	                "<Initiated>2024-12-20T10:00:00.000Z</Initiated></Upload>"
	                "<Upload><Key>k2</Key><UploadId>u2</UploadId></Upload>"
	                "</ListMultipartUploadsResult>";
	struct s3_xml_uploads acc = {0};
	struct err e = {0};
	CHECK(s3_xml_parse_uploads(x, strlen(x), &acc, &e) == 0);
	CHECK(acc.n == 2 && acc.truncated);
	CHECK_STR(acc.next_key_marker, "k2");
	CHECK_STR(acc.next_upload_id_marker, "u2");
	if (acc.n == 2) {
		CHECK_STR(acc.v[0].upload_id, "u1");
		CHECK(acc.v[0].initiated == 1734688800);
		CHECK_STR(acc.v[1].key, "k2");
	}
	s3_xml_uploads_free(&acc);
}

static void test_mpu(void)
{
	const char *init = "<InitiateMultipartUploadResult " NS "><Bucket>b</Bucket><Key>k</Key>"
	                   "<UploadId>abc-123</UploadId></InitiateMultipartUploadResult>";
	const char *done = "  \n<?xml version=\"1.0\"?>\n<CompleteMultipartUploadResult " NS
	                   "><Key>k</Key><ETag>\"e-3\"</ETag></CompleteMultipartUploadResult>";
	const char *bad = "<Error><Code>InvalidPart</Code><Message>m</Message></Error>";
	char *id = NULL, etag[S3_ETAG_MAX], code[64], msg[64];
	int is_error;
	struct err e = {0};
	CHECK(s3_xml_parse_initiate(init, strlen(init), &id, &e) == 0);
	CHECK_STR(id, "abc-123");
	free(id);
	CHECK(s3_xml_parse_initiate("<x/>", 4, &id, &e) == -1 && id == NULL);
	CHECK(s3_xml_parse_complete(done, strlen(done), etag, &is_error, code, sizeof(code), msg,
	                            sizeof(msg), &e) == 0);
	CHECK_STR(etag, "\"e-3\"");
	CHECK(s3_xml_parse_complete(bad, strlen(bad), etag, &is_error, code, sizeof(code), msg,
	                            sizeof(msg), &e) == -1);
	CHECK(is_error == 1);
	CHECK_STR(code, "InvalidPart");
}

static void test_delete(void)
{
	const char *ok = "<DeleteResult " NS "></DeleteResult>";
	const char *some = "<DeleteResult " NS "><Deleted><Key>a</Key></Deleted>"
	                   "<Error><Key>b</Key><Code>AccessDenied</Code><Message>no</Message>"
	                   "</Error><Error><Key>c</Key><Code>X</Code></Error></DeleteResult>";
	struct s3_xml_delete_result r;
	struct err e = {0};
	CHECK(s3_xml_parse_delete(ok, strlen(ok), &r, &e) == 0 && r.nerrors == 0);
	CHECK(s3_xml_parse_delete(some, strlen(some), &r, &e) == 0 && r.nerrors == 2);
	CHECK_STR(r.key, "b");
	CHECK_STR(r.code, "AccessDenied");
	CHECK_STR(r.msg, "no");
}

static void test_build(void)
{
	struct buf b = BUF_INIT;
	char *keys[] = {"a&b", "<c>\"'"};
	struct s3_part parts[] = {{1, "\"e1\""}, {2, "\"e2\""}};
	CHECK(s3_xml_build_delete(&b, keys, 2) == 0);
	CHECK(strstr(b.data, "<Quiet>true</Quiet><Object><Key>a&amp;b</Key></Object><Object>"
	                     "<Key>&lt;c&gt;&quot;&apos;</Key></Object></Delete>") != NULL);
	buf_reset(&b);
	CHECK(s3_xml_build_complete(&b, parts, 2) == 0);
	CHECK(strstr(b.data, "<Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part>"
	                     "<Part><PartNumber>2</PartNumber>") != NULL);
	buf_free(&b);
}

/* Dialects (issue 18): what other servers put in these documents. */
static void test_dialects(void)
{
	/* AWS: a 400 for the wrong signing region names the right one */
	const char *region = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>m</Message>"
	                     "<Region>eu-west-1</Region></Error>";
	/* radosgw 16.2: CompleteMultipartUpload with an empty ETag */
	const char *rgw = "<CompleteMultipartUploadResult " NS "><Location>l</Location>"
	                  "<Bucket>b</Bucket><Key>k</Key><ETag></ETag>"
	                  "</CompleteMultipartUploadResult>";
	/* a page after StartAfter=a/ that rolls a/x up into a/ again */
	const char *p1 = "<ListBucketResult " NS "><IsTruncated>true</IsTruncated>"
	                 "<CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes>"
	                 "</ListBucketResult>";
	const char *p2 = "<ListBucketResult " NS "><IsTruncated>false</IsTruncated>"
	                 "<Contents><Key>b</Key></Contents>"
	                 "<CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes>"
	                 "<CommonPrefixes><Prefix>c/</Prefix></CommonPrefixes>"
	                 "</ListBucketResult>";
	char out[64], etag[S3_ETAG_MAX] = "stale", code[64], msg[64];
	int is_error = 0;
	struct s3_xml_list acc = {0};
	struct err e = {0};
	CHECK(s3_xml_error_field(region, strlen(region), "Region", out, sizeof(out)) == 0);
	CHECK_STR(out, "eu-west-1");
	CHECK(s3_xml_error_field(region, strlen(region), "Endpoint", out, sizeof(out)) == -1);
	CHECK_STR(out, "");
	CHECK(s3_xml_error_field("<x/>", 4, "Region", out, sizeof(out)) == -1);
	CHECK(s3_xml_parse_complete(rgw, strlen(rgw), etag, &is_error, code, sizeof(code), msg,
	                            sizeof(msg), &e) == 0);
	CHECK_STR(etag, "");
	CHECK(s3_xml_parse_list(p1, strlen(p1), &acc, &e) == 0);
	CHECK(s3_xml_parse_list(p2, strlen(p2), &acc, &e) == 0);
	CHECK(acc.nobjs == 1 && acc.nprefixes == 2);
	if (acc.nprefixes == 2) {
		CHECK_STR(acc.prefixes[0], "a/");
		CHECK_STR(acc.prefixes[1], "c/");
	}
	s3_xml_list_free(&acc);
}

/* a listing is bucket input: a Size that is not a plain decimal that fits
 * is a malformed entry, never a huge number */
static void test_bad_sizes(void)
{
	static const char *const bad[] = {"-1",
	                                  " 5",
	                                  "+5",
	                                  "18446744073709551616",
	                                  "9223372036854775808",
	                                  "1e9",
	                                  "",
	                                  "123456789012345678901234567890123"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char xml[512];
		struct s3_xml_list acc = {0};
		struct err e = {0};
		snprintf(xml, sizeof(xml),
		         "<ListBucketResult " NS "><IsTruncated>false</IsTruncated>"
		         "<Contents><Key>k</Key><Size>%s</Size></Contents></ListBucketResult>",
		         bad[i]);
		CHECK(s3_xml_parse_list(xml, strlen(xml), &acc, &e) == -1);
		s3_xml_list_free(&acc);
	}
	const char *ok = "<ListBucketResult " NS "><IsTruncated>false</IsTruncated>"
	                 "<Contents><Key>k</Key><Size>9223372036854775807</Size></Contents>"
	                 "</ListBucketResult>";
	struct s3_xml_list acc = {0};
	struct err e = {0};
	CHECK(s3_xml_parse_list(ok, strlen(ok), &acc, &e) == 0);
	CHECK(acc.nobjs == 1 && acc.objs[0].size == 9223372036854775807ULL);
	s3_xml_list_free(&acc);
}

int main(void)
{
	test_bad_sizes();
	test_error();
	test_list();
	test_uploads();
	test_mpu();
	test_delete();
	test_build();
	test_dialects();
	return check_report("s3_xml");
}
