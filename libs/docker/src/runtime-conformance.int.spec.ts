/**
 * The ContainerRuntime conformance suite against the real DockerContainerRuntime
 * on the local engine (the fake runs the same suite in
 * testing/fake-container-runtime.spec.ts). Each scripted behaviour becomes a
 * bash script in the local base image.
 */
import { BASE_IMAGE, dockerHarness, sh } from './__fixtures__/harness';
import { buildContainerCreateOptions } from './container-spec';
import type { ContainerRunSpec } from './container-runtime';
import { describeContainerRuntimeConformance, type ConformanceBehaviour, type ContainerRuntimeConformanceTarget } from './testing';

/** A bash word holding exactly `s`. */
const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** The shell script that behaves as `b` says. */
function script(b: ConformanceBehaviour): string {
  const end = b.end ?? { exit: 0 };
  const parts: string[] = [];
  // The SIGTERM disposition is set first: a stop may come while lines are still printed.
  if ('hang' in end && end.onSigterm === 'ignore') parts.push(`trap '' TERM`);
  else if ('hang' in end && end.onSigterm !== undefined) parts.push(`trap 'exit ${end.onSigterm}' TERM`);
  for (const line of b.lines ?? []) {
    if (line.delayMs) parts.push(`sleep ${line.delayMs / 1000}`);
    parts.push(`printf '%s\\n' ${quote(line.text)}${line.stream === 'stderr' ? ' >&2' : ''}`);
  }
  if ('exit' in end) parts.push(`exit ${end.exit}`);
  else if ('oom' in end) parts.push(`exec perl -e ${quote('$x = "a" x (200*1024*1024); print length($x), "\\n"')}`);
  else parts.push('while true; do sleep 0.1; done');
  return parts.join('\n');
}

async function dockerTarget(): Promise<ContainerRuntimeConformanceTarget> {
  const h = await dockerHarness('conformance');
  return {
    runtime: h.runtime,
    workerId: h.workerId,
    presentImage: BASE_IMAGE,
    spec: (b, overrides = {}) =>
      h.spec({ argv: sh(script(b)), ...(b.end && 'oom' in b.end ? { memoryBytes: 32 * 1024 * 1024 } : {}), ...overrides }),
    labelsOf: async (id) => {
      try {
        return (await h.docker.getContainer(id).inspect()).Config.Labels ?? {};
      } catch (err) {
        if ((err as { statusCode?: number }).statusCode === 404) return null;
        throw err;
      }
    },
    leftovers: async () => (await h.leftovers()).map((c) => c.Id),
    plantOrphan: async (labels: ContainerRunSpec['labels']) =>
      (await h.docker.createContainer(buildContainerCreateOptions(h.spec({ argv: sh('sleep 600'), labels })))).id,
    cleanup: () => h.cleanup(),
  };
}

describeContainerRuntimeConformance('DockerContainerRuntime on the local engine', dockerTarget, 120_000);
