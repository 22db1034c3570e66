/**
 * Sanitisers for text a user typed that ends up in file names, captions,
 * engine config files and safetensors metadata. Nothing a user typed reaches
 * a shell (every command is an argv array), but it still must not be able to
 * look like an option (`--foo`), a path (`../x`), a hidden file (`.x`), or
 * break a TOML/YAML string.
 */

/** The platform's trigger-word token rule (loraResolutionService): `[a-zA-Z0-9_.-]+`. */
export const TRIGGER_WORD_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
export const TRIGGER_WORD_MAX_LENGTH = 50;

/** Output names become `<name>.safetensors` and `loras/<name>.safetensors`. */
export const OUTPUT_NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_-]*$/;
export const OUTPUT_NAME_MAX_LENGTH = 64;

function normalise(s: string, allowed: RegExp, maxLength: number): string {
  return (
    s
      .normalize('NFKD')
      // Drop combining marks so "café" becomes "cafe" rather than "caf".
      .replace(/[\u0300-\u036f]/g, '')
      .trim()
      .replace(/\s+/g, '_')
      .replace(allowed, '')
      .replace(/_+/g, '_')
      // Never start with '.', '-' or '_' runs that look like options or hidden files.
      .replace(/^[._-]+/, '')
      .slice(0, maxLength)
      .replace(/[._-]+$/, '')
  );
}

/**
 * Make a single-token trigger word the platform can match in prompts.
 * Spaces and dots become '_', other characters outside [A-Za-z0-9_-] are removed.
 * Throws when nothing usable is left, because a LoRA without a trigger word
 * cannot be used on the platform.
 */
export function sanitizeTriggerWord(s: string): string {
  if (typeof s !== 'string') throw new Error('trigger word must be a string');
  // '.' becomes '_': the platform's prompt tokenizer splits words on '.' (loraResolutionService.js
  // SPLIT_KEEP_DELIMITERS_REGEX) and reads trailing dots as weight modifiers, so "v2.1" is never found.
  const out = normalise(s.replace(/\./g, '_'), /[^A-Za-z0-9_-]/g, TRIGGER_WORD_MAX_LENGTH);
  if (!out) {
    throw new Error(
      `trigger word ${JSON.stringify(s)} has no usable characters: use letters, digits, '_' or '-' (max ${TRIGGER_WORD_MAX_LENGTH})`,
    );
  }
  return out;
}

/**
 * Make a file-name-safe LoRA output name (no dots, no slashes, no leading '-').
 * Throws when nothing usable is left.
 */
export function sanitizeOutputName(s: string): string {
  if (typeof s !== 'string') throw new Error('output name must be a string');
  const out = normalise(s, /[^A-Za-z0-9_-]/g, OUTPUT_NAME_MAX_LENGTH);
  if (!out) {
    throw new Error(
      `output name ${JSON.stringify(s)} has no usable characters: use letters, digits, '_' or '-' (max ${OUTPUT_NAME_MAX_LENGTH})`,
    );
  }
  return out;
}

/** Job ids appear in metadata and config files: Mongo ObjectId hex or similar. */
export const JOB_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** Defence in depth for render(): refuse values that did not come through the sanitisers. */
export function assertRenderSafe(input: { jobId: string; triggerWord: string; outputName: string }): void {
  const problems: string[] = [];
  if (!JOB_ID_PATTERN.test(input.jobId)) problems.push(`jobId ${JSON.stringify(input.jobId)} must match ${JOB_ID_PATTERN}`);
  if (!TRIGGER_WORD_PATTERN.test(input.triggerWord) || input.triggerWord.length > TRIGGER_WORD_MAX_LENGTH) {
    problems.push(`triggerWord ${JSON.stringify(input.triggerWord)} is not sanitised: pass it through sanitizeTriggerWord()`);
  }
  if (!OUTPUT_NAME_PATTERN.test(input.outputName) || input.outputName.length > OUTPUT_NAME_MAX_LENGTH) {
    problems.push(`outputName ${JSON.stringify(input.outputName)} is not sanitised: pass it through sanitizeOutputName()`);
  }
  if (problems.length > 0) throw new Error(`render input rejected:\n  - ${problems.join('\n  - ')}`);
}
