#!/usr/bin/env node
// Validates Kubernetes objects against the schemas bundled in k8s_validators.cjs (see README.md).
//
//   node validate_docs.cjs DOCS.json
//
// DOCS.json: [{"source": "file.yaml#0", "doc": {...}}, ...] (deploy/k8s/validate_manifests.py
// writes it from the YAML files). For each object: its "apiVersion/kind" must have a bundled
// validator, the validator must accept it (types, required fields, enums, formats such as
// quantities and int32), and every field of the object must be one the schema knows (strict mode,
// like kubeconform -strict and kubectl's server-side field validation: a misspelt key such as
// "livenesProbe" is an error, not silently dropped).
//
// Strict mode without rewriting the vendored validators: the object is wrapped in a Proxy that
// records every key the validator reads. A compiled validator reads exactly the properties its
// schema declares (and every key of a map it validates), so a key of the object it never read is
// a key the schema does not declare.
//
// Prints one line per object ("ok ..." or "FAIL ...: path: problem"); exit 0 when all pass, 1 when
// any fails, 2 on bad input.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { validators } = require(path.join(__dirname, "k8s_validators.cjs"));

function tracked(value, at, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string") return v;
      const p = `${at}/${key}`;
      seen.add(p);
      return v !== null && typeof v === "object" ? tracked(v, p, seen) : v;
    },
  });
}

function unknownKeys(value, at, seen, out) {
  if (value === null || typeof value !== "object") return;
  for (const key of Object.keys(value)) {
    const p = `${at}/${key}`;
    if (seen.has(p)) unknownKeys(value[key], p, seen, out);
    else out.push(`${p}: unknown field (not in the schema)`);
  }
}

function describe(error) {
  const where = error.instancePath || "/";
  const params = Object.entries(error.params || {})
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(" ");
  return `${where}: ${error.keyword} ${params}`.trim();
}

function check(doc) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return ["/: not an object"];
  const key = `${doc.apiVersion}/${doc.kind}`;
  const validate = validators[key];
  if (!validate) return [`/: no schema bundled for ${key} (add it to entry.mjs)`];
  const seen = new Set();
  const problems = [];
  if (!validate(tracked(doc, "", seen))) {
    // ajv reports each failing branch of a oneOf (IntOrString, quantities): keep distinct lines.
    for (const e of validate.errors || []) problems.push(describe(e));
  }
  unknownKeys(doc, "", seen, problems);
  return [...new Set(problems)];
}

function main() {
  if (process.argv.length !== 3) {
    console.error("usage: node validate_docs.cjs DOCS.json");
    process.exit(2);
  }
  let items;
  try {
    items = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  } catch (e) {
    console.error(`validate_docs: cannot read ${process.argv[2]}: ${e.message}`);
    process.exit(2);
  }
  let failed = 0;
  for (const { source, doc } of items) {
    const problems = check(doc);
    const what = `${doc && doc.kind}/${doc && doc.metadata && doc.metadata.name}`;
    if (problems.length === 0) {
      console.log(`ok   ${source} ${what}`);
    } else {
      failed++;
      for (const p of problems) console.log(`FAIL ${source} ${what}: ${p}`);
    }
  }
  console.log(`validate_docs: ${items.length - failed} valid, ${failed} invalid`);
  process.exit(failed ? 1 : 0);
}

main();
