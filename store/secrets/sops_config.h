/* .sops.yaml creation rules, as sops applies them when it creates a file:
 * the first rule whose path_regex matches the new file's path (or that has
 * none) gives its recipients (age, pgp: comma-separated lists) and which
 * leaves are encrypted (encrypted_regex).  Only what labctl's encryptor
 * supports is taken; a matching rule that asks for anything else (KMS, key
 * groups, other leaf rules) is refused rather than silently weakened. */
#ifndef IMGSTORE_STORE_SECRETS_SOPS_CONFIG_H
#define IMGSTORE_STORE_SECRETS_SOPS_CONFIG_H

#include "common/err.h"

#include <stddef.h>

#define SOPS_CONFIG_NAME      ".sops.yaml"
#define SOPS_CONFIG_MAX_BYTES (1u << 20)
#define SOPS_RULE_MAX_KEYS    64

struct sops_creation_rule {
	char *config; /* the .sops.yaml it came from */
	char *age[SOPS_RULE_MAX_KEYS];
	size_t nage;
	char *pgp[SOPS_RULE_MAX_KEYS];
	size_t npgp;
	char *encrypted_regex; /* or NULL */
};

/* Look for .sops.yaml in dir and its parents; with one, find the rule for
 * file_path (matched as given and relative to the .sops.yaml's directory).
 * 0 with *out filled; ERR_NOTFOUND when there is no .sops.yaml or no rule
 * matches; ERR_INVALID for a file or rule we cannot use. */
int sops_creation_rule_find(const char *dir, const char *file_path, struct sops_creation_rule *out,
                            struct err *e);
void sops_creation_rule_free(struct sops_creation_rule *r);

#endif
