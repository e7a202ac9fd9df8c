#include "store/secrets/sops_config.h"

#include "common/buf.h"
#include "common/file.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

static const char *scalar_of(yaml_document_t *d, yaml_node_t *n)
{
	(void)d;
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
	if (!map || map->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
	     p++) {
		const char *k = scalar_of(d, yaml_document_get_node(d, p->key));
		if (k && !strcmp(k, key))
			return yaml_document_get_node(d, p->value);
	}
	return NULL;
}

static int matches(const char *re_text, const char *subject, int *hit, struct err *e)
{
	int ec;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)re_text, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec,
	                               &off, NULL);
	pcre2_match_data *md;
	if (!re)
		return err_set(e, ERR_INVALID,
		               "path_regex \"%.80s\" is not a valid regular expression", re_text);
	md = pcre2_match_data_create_from_pattern(re, NULL);
	*hit = md && pcre2_match(re, (PCRE2_SPTR)subject, strlen(subject), 0, 0, md, NULL) >= 0;
	pcre2_match_data_free(md);
	pcre2_code_free(re);
	return 0;
}

/* "a, b,c" -> up to SOPS_RULE_MAX_KEYS malloc'd strings. */
static int split_keys(const char *list, char **v, size_t *n, const char *what, struct err *e)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int rc = 0;
	if (!copy)
		return err_set(e, ERR_IO, "out of memory");
	for (tok = strtok_r(copy, ", \t\n", &save); tok && !rc;
	     tok = strtok_r(NULL, ", \t\n", &save)) {
		if (*n >= SOPS_RULE_MAX_KEYS)
			rc = err_set(e, ERR_INVALID, "more than %d %s keys in one rule",
			             SOPS_RULE_MAX_KEYS, what);
		else if (!(v[*n] = strdup(tok)))
			rc = err_set(e, ERR_IO, "out of memory");
		else
			(*n)++;
	}
	free(copy);
	return rc;
}

static int take_rule(yaml_document_t *d, yaml_node_t *rule, struct sops_creation_rule *out,
                     struct err *e)
{
	static const char *const unsupported[] = {"kms",
	                                          "gcp_kms",
	                                          "azure_keyvault",
	                                          "hc_vault_transit_uri",
	                                          "key_groups",
	                                          "shamir_threshold",
	                                          "unencrypted_regex",
	                                          "encrypted_suffix",
	                                          "unencrypted_suffix",
	                                          "encrypted_comment_regex",
	                                          "unencrypted_comment_regex"};
	const char *s;
	for (size_t i = 0; i < sizeof(unsupported) / sizeof(*unsupported); i++)
		if (get(d, rule, unsupported[i]))
			return err_set(
			        e, ERR_INVALID,
			        "%s: the matching creation rule uses %s, which labctl does not "
			        "support (only age, pgp and encrypted_regex); give --age/--pgp "
			        "instead",
			        out->config, unsupported[i]);
	if ((s = scalar_of(d, get(d, rule, "age"))) &&
	    split_keys(s, out->age, &out->nage, "age", e))
		return -1;
	if ((s = scalar_of(d, get(d, rule, "pgp"))) &&
	    split_keys(s, out->pgp, &out->npgp, "pgp", e))
		return -1;
	if ((s = scalar_of(d, get(d, rule, "encrypted_regex"))) && *s &&
	    !(out->encrypted_regex = strdup(s)))
		return err_set(e, ERR_IO, "out of memory");
	if (!out->nage && !out->npgp)
		return err_set(e, ERR_INVALID,
		               "%s: the matching creation rule names no age or pgp "
		               "recipient",
		               out->config);
	return 0;
}

/* The first rule of the config whose path_regex matches one of the names. */
static int find_rule(const char *text, size_t len, const char *const names[2],
                     struct sops_creation_rule *out, struct err *e)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	yaml_node_t *rules;
	int rc = -1, loaded = 0;
	if (!yaml_parser_initialize(&parser))
		return err_set(e, ERR_IO, "out of memory");
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		err_set(e, ERR_INVALID, "%s: line %zu: invalid YAML", out->config,
		        parser.problem_mark.line + 1);
		goto out;
	}
	loaded = 1;
	rules = get(&doc, yaml_document_get_root_node(&doc), "creation_rules");
	if (!rules || rules->type != YAML_SEQUENCE_NODE) {
		err_set(e, ERR_NOTFOUND, "%s has no creation_rules", out->config);
		goto out;
	}
	for (yaml_node_item_t *it = rules->data.sequence.items.start;
	     it < rules->data.sequence.items.top; it++) {
		yaml_node_t *rule = yaml_document_get_node(&doc, *it);
		const char *re = scalar_of(&doc, get(&doc, rule, "path_regex"));
		int hit = !re;
		for (int i = 0; re && i < 2 && !hit; i++)
			if (names[i] && matches(re, names[i], &hit, e))
				goto out;
		if (hit) {
			rc = take_rule(&doc, rule, out, e);
			goto out;
		}
	}
	err_set(e, ERR_NOTFOUND, "no creation rule of %s matches %s", out->config, names[0]);
out:
	if (loaded)
		yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	return rc;
}

int sops_creation_rule_find(const char *dir, const char *file_path, struct sops_creation_rule *out,
                            struct err *e)
{
	char *at = realpath(dir, NULL), *abs_file = NULL, *rel = NULL;
	struct buf text = BUF_INIT;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	if (!at)
		return err_errno(e, "%s", dir);
	for (;;) {
		free(out->config);
		if (asprintf(&out->config, "%s/%s", strcmp(at, "/") ? at : "", SOPS_CONFIG_NAME) <
		    0) {
			out->config = NULL;
			err_set(e, ERR_IO, "out of memory");
			goto out;
		}
		if (!access(out->config, F_OK))
			break;
		if (!strcmp(at, "/")) {
			err_set(e, ERR_NOTFOUND, "no %s in %s or its parents", SOPS_CONFIG_NAME,
			        dir);
			goto out;
		}
		*strrchr(at, '/') = '\0';
		if (!*at)
			strcpy(at, "/");
	}
	if (file_read_all(out->config, SOPS_CONFIG_MAX_BYTES, &text, e))
		goto out;
	/* the name relative to the config's directory, as sops users write rules */
	{
		char *d = strdup(file_path), *base;
		char *real_dir = d ? realpath(dirname(d), NULL) : NULL;
		size_t n = strlen(at);
		if (d && real_dir) {
			base = strrchr(file_path, '/');
			if (asprintf(&abs_file, "%s/%s", real_dir, base ? base + 1 : file_path) < 0)
				abs_file = NULL;
		}
		if (abs_file && !strncmp(abs_file, at, n) && abs_file[n] == '/')
			rel = abs_file + n + 1;
		free(real_dir);
		free(d);
	}
	{
		const char *names[2] = {file_path, rel};
		rc = find_rule(text.data ? text.data : "", text.len, names, out, e);
	}
out:
	if (rc)
		sops_creation_rule_free(out);
	buf_free(&text);
	free(abs_file);
	free(at);
	return rc;
}

void sops_creation_rule_free(struct sops_creation_rule *r)
{
	for (size_t i = 0; i < r->nage; i++)
		free(r->age[i]);
	for (size_t i = 0; i < r->npgp; i++)
		free(r->pgp[i]);
	free(r->encrypted_regex);
	free(r->config);
	memset(r, 0, sizeof(*r));
}
