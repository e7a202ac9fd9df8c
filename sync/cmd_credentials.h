/* labctl credentials: make and check SOPS-encrypted bucket credentials.
 *
 *   labctl credentials encrypt --age RECIPIENT [--age R2] [--pgp FPR] [--in PLAIN.yaml|-] --out
 * FILE labctl credentials check   [--credentials FILE] [--sops-age-key-file F]
 *
 * Links: sync/cmd_credentials.c + store_dep (store/sops.c, store/age.c,
 * store/credentials.c; libyaml, OpenSSL, PCRE2). */
#ifndef IMGSTORE_SYNC_CMD_CREDENTIALS_H
#define IMGSTORE_SYNC_CMD_CREDENTIALS_H

/* argv[0] is "credentials" (the word after labctl), argv[1] the subcommand.
 * Returns the process exit status: 0 success, 1 the work failed (no key opens
 * the file, gpg failed, I/O), 2 usage error or invalid/tampered file. */
int cmd_credentials(int argc, char **argv);

#endif
