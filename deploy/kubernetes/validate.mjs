// Validates deploy/kubernetes offline: every kustomization lists exactly the
// files beside it, and every resource validates against its kind's schema
// (Kubernetes' own, and the CRDs of KEDA, Strimzi and CloudNativePG, from the
// kubernetes-models packages on npm). Prints one JSON object: the resources,
// the errors, and what the binary must accept (the lifecycle.toml of the
// ConfigMap, each workload's LIFECYCLE_* variables, the Secret's keys, the
// KafkaTopics) for jobs/tests/it/deploy.rs to check against the binary.
//
//   node validate.mjs <deploy/kubernetes>   (run from a folder whose node_modules
//   holds kubernetes-models, @kubernetes-models/{keda,strimzi-kafka-operator,cloudnative-pg}, yaml)

import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const { parseAllDocuments, parse } = await import("yaml");

const MODELS = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
  "kafka.strimzi.io/v1beta2": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2",
  "postgresql.cnpg.io/v1": "@kubernetes-models/cloudnative-pg/postgresql.cnpg.io/v1",
};

const root = process.argv[2];
const out = { resources: [], errors: [], config: null, secret: {}, workloads: [], topics: [] };
const error = (where, message) => out.errors.push(`${where}: ${message}`);

for (const dir of readdirSync(root).filter((d) => statSync(join(root, d)).isDirectory())) {
  const kpath = join(root, dir, "kustomization.yaml");
  let kustomization;
  try {
    kustomization = parse(readFileSync(kpath, "utf8"));
  } catch (e) {
    error(kpath, `unreadable: ${e.message}`);
    continue;
  }
  const listed = new Set(kustomization.resources ?? []);
  const present = readdirSync(join(root, dir)).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
  for (const f of present) if (!listed.has(f)) error(kpath, `${f} is not listed in resources`);
  for (const f of listed) if (!present.includes(f)) error(kpath, `lists ${f}, which does not exist`);
  const images = new Set((kustomization.images ?? []).map((i) => i.name));
  for (const f of [...listed].filter((f) => present.includes(f))) {
    const where = `${dir}/${f}`;
    const docs = parseAllDocuments(readFileSync(join(root, dir, f), "utf8"));
    for (const [i, d] of docs.entries()) {
      if (d.errors.length) {
        error(`${where}#${i}`, d.errors.map((e) => e.message).join("; "));
        continue;
      }
      const obj = d.toJSON();
      if (!obj) continue;
      const { apiVersion, kind } = obj;
      const name = obj.metadata?.name;
      out.resources.push({ file: where, apiVersion, kind, name });
      const module = MODELS[apiVersion];
      if (!module) {
        error(`${where} ${kind} ${name}`, `no schema for apiVersion ${apiVersion}`);
        continue;
      }
      const models = await import(module);
      const Model = models[kind];
      if (!Model) {
        error(`${where} ${kind} ${name}`, `no schema for kind ${kind} in ${apiVersion}`);
        continue;
      }
      try {
        new Model(obj).validate();
      } catch (e) {
        error(`${where} ${kind} ${name}`, e.message);
      }
      if (kind === "Deployment" || kind === "StatefulSet") {
        const labels = obj.spec?.template?.metadata?.labels ?? {};
        for (const [k, v] of Object.entries(obj.spec?.selector?.matchLabels ?? {})) {
          if (labels[k] !== v) error(`${where} ${kind} ${name}`, `selector ${k}=${v} does not match the pod labels`);
        }
        for (const c of obj.spec?.template?.spec?.containers ?? []) {
          if (c.image === "lifecycle" && !images.has("lifecycle")) {
            error(`${where} ${kind} ${name}`, "image 'lifecycle' has no entry under images in the kustomization");
          }
          const env = {};
          for (const e of c.env ?? []) env[e.name] = e.value ?? (e.valueFrom?.fieldRef ? `${name}-0` : "");
          out.workloads.push({ kind, name, args: c.args ?? [], env, ports: (c.ports ?? []).map((p) => p.containerPort),
            probes: [c.livenessProbe?.httpGet?.path, c.readinessProbe?.httpGet?.path].filter(Boolean) });
        }
      }
      if (kind === "ConfigMap" && obj.data?.["lifecycle.toml"]) out.config = obj.data["lifecycle.toml"];
      if (kind === "Secret") Object.assign(out.secret, obj.stringData ?? {});
      if (kind === "KafkaTopic") out.topics.push({ name: obj.spec?.topicName ?? name, partitions: obj.spec?.partitions,
        replicas: obj.spec?.replicas, config: obj.spec?.config ?? {} });
    }
  }
}
console.log(JSON.stringify(out));
