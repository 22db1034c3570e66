/**
 * The platform's LoRA lookup, re-expressed in TypeScript line for line from
 * monygroupcorp/noema at e0dd58f9, so our tests can run it against what the
 * worker registers. Nothing here is ours: when the platform changes, update
 * this copy, never "fix" it to make a test pass.
 *
 * - publicLoraRecords: LoraService._refreshPublicCache
 *   (src/core/services/store/lora/LoraService.js): `loraModels.findMany({visibility: 'public'})`
 *   mapped to the cache records.
 * - buildTriggerMap: LoraService._buildTriggerMap / buildTriggerMapFromLoras
 *   (src/api/internal/loras/loraTriggerMapApi.js).
 * - resolveLoraTriggers: src/core/services/loraResolutionService.js, both
 *   passes (existing `<lora:…>` tags, then trigger words), minus the per-user
 *   cache: the caller passes the trigger map.
 * - comfyDeployUpload: TrainingFinalizationService.uploadToComfyDeploy
 *   (src/core/services/training/TrainingFinalizationService.js): the file
 *   ComfyUI loads for `<lora:slug:w>` is `loras/<slug>.safetensors`, fetched
 *   from `publishedTo.cloudflareUrl || modelFileUrl` when there is no HF repo.
 */
import type { Db } from 'mongodb';

export interface TriggerMapEntry {
  modelId: string;
  slug: string;
  defaultWeight: number;
  access: string;
  ownerAccountId: string | null;
  updatedAt: unknown;
  checkpoint: string | undefined;
  baseTrigger?: string;
  isCognate?: boolean;
  replaceWithBaseTrigger?: string;
}

interface LoraRecord {
  modelId: string;
  slug: string;
  triggerWords: string[];
  cognates: Array<{ word?: string; replaceWith?: string }>;
  defaultWeight: number;
  access: string;
  ownerAccountId: string | null;
  updatedAt: unknown;
  checkpoint: string | undefined;
}

/** LoraService._refreshPublicCache: the public LoRAs as the trigger map is built from them. */
export async function publicLoraRecords(db: Db): Promise<LoraRecord[]> {
  const publicLoras = await db.collection('loraModels').find({ visibility: 'public' }).toArray();
  return publicLoras.map((lora) => ({
    modelId: lora._id.toString(),
    slug: lora['slug'],
    triggerWords: lora['triggerWords'] || [],
    cognates: lora['cognates'] || [],
    defaultWeight: lora['defaultWeight'] || 1.0,
    access: 'public',
    ownerAccountId: lora['ownedBy'] ? lora['ownedBy'].toString() : null,
    updatedAt: lora['updatedAt'] || lora['createdAt'],
    checkpoint: lora['checkpoint'],
  }));
}

/** buildTriggerMapFromLoras: lower-cased trigger word (and cognate) → LoRAs. */
export function buildTriggerMap(loras: LoraRecord[]): Record<string, TriggerMapEntry[]> {
  const triggerMap: Record<string, TriggerMapEntry[]> = {};
  for (const loraDetails of loras) {
    const hasTriggers = Array.isArray(loraDetails.triggerWords) && loraDetails.triggerWords.length > 0;
    const hasCognates = Array.isArray(loraDetails.cognates) && loraDetails.cognates.length > 0;
    if (!hasTriggers && !hasCognates) continue;
    const loraDataForMap: TriggerMapEntry = {
      modelId: loraDetails.modelId,
      slug: loraDetails.slug,
      defaultWeight: loraDetails.defaultWeight || 1.0,
      access: loraDetails.access || 'public',
      ownerAccountId: loraDetails.ownerAccountId,
      updatedAt: loraDetails.updatedAt,
      checkpoint: loraDetails.checkpoint,
    };
    if (hasTriggers) {
      for (const triggerWord of loraDetails.triggerWords) {
        if (!triggerWord) continue;
        const key = triggerWord.toLowerCase();
        const dataToPush = { ...loraDataForMap, baseTrigger: triggerWord };
        if (!triggerMap[key]) triggerMap[key] = [];
        if (!triggerMap[key].some((m) => m.modelId === dataToPush.modelId)) triggerMap[key].push(dataToPush);
      }
    }
    if (hasCognates) {
      for (const cognate of loraDetails.cognates) {
        if (!cognate?.word) continue;
        const key = cognate.word.toLowerCase();
        const effectiveBaseTrigger = cognate.replaceWith || (hasTriggers ? loraDetails.triggerWords[0] : cognate.word);
        const cognateDataForMap = { ...loraDataForMap, isCognate: true, replaceWithBaseTrigger: effectiveBaseTrigger };
        if (!triggerMap[key]) triggerMap[key] = [];
        if (!triggerMap[key].some((m) => m.modelId === cognateDataForMap.modelId)) triggerMap[key].push(cognateDataForMap);
      }
    }
  }
  return triggerMap;
}

export interface AppliedLora {
  slug: string;
  weight: number;
  originalWord: string;
  replacedWord: string;
  modelId: string;
  ownerAccountId: string | null;
}

const LORA_TAG_REGEX = /<lora:([^:]+):([^>]+)>/g;
const SPLIT_KEEP_DELIMITERS_REGEX = /(\s+|[.,!?()[\]{}'"]+)/g;

/** resolveLoraTriggers: trigger words → `<lora:slug:weight>`, with its tool base-model filter and conflict order. */
export function resolveLoraTriggers(
  promptString: string,
  masterAccountId: string | null,
  toolBaseModel: string | undefined,
  triggerMapData: Record<string, TriggerMapEntry[]>,
): { modifiedPrompt: string; appliedLoras: AppliedLora[]; warnings: string[] } {
  const appliedLoras: AppliedLora[] = [];
  const warnings: string[] = [];
  const lorasAppliedThisRun = new Set<string>();
  // _fetchAndCacheTriggerMap: keys lower-cased into a Map.
  const triggerMap = new Map<string, TriggerMapEntry[]>();
  for (const [key, loraList] of Object.entries(triggerMapData)) triggerMap.set(key.toLowerCase(), loraList);
  if (triggerMap.size === 0) return { modifiedPrompt: promptString, appliedLoras, warnings };

  // Pass 1: existing <lora:slug:weight> tags are kept when the slug is in the map (or the map is the public one).
  const remainingPrompt = promptString;
  let finalPromptParts: string[] = [];
  let loraTagMatch: RegExpExecArray | null;
  let lastIndex = 0;
  while ((loraTagMatch = LORA_TAG_REGEX.exec(remainingPrompt)) !== null) {
    finalPromptParts.push(remainingPrompt.substring(lastIndex, loraTagMatch.index));
    const fullTag = loraTagMatch[0];
    const slug = loraTagMatch[1];
    const weight = parseFloat(loraTagMatch[2]);
    if (!isNaN(weight)) {
      if (!lorasAppliedThisRun.has(slug)) {
        let foundInMap = false;
        triggerMap.forEach((loraList) => {
          if (loraList.some((l) => l.slug === slug)) foundInMap = true;
        });
        if (foundInMap || !masterAccountId) {
          let inlineOwnerAccountId: string | null = null;
          triggerMap.forEach((loraList) => {
            const match = loraList.find((l) => l.slug === slug);
            if (match) inlineOwnerAccountId = match.ownerAccountId || null;
          });
          appliedLoras.push({ slug, weight, originalWord: fullTag, replacedWord: fullTag, modelId: 'N/A_INLINE_TAG', ownerAccountId: inlineOwnerAccountId });
          lorasAppliedThisRun.add(slug);
          finalPromptParts.push(fullTag);
        } else {
          warnings.push(`Inline tag ${fullTag} refers to an unknown or inaccessible LoRA. It will be stripped.`);
        }
      } else {
        finalPromptParts.push(fullTag);
      }
    } else {
      warnings.push(`Invalid weight in inline tag ${fullTag}. Tag will be preserved as text.`);
      finalPromptParts.push(fullTag);
    }
    lastIndex = LORA_TAG_REGEX.lastIndex;
  }
  finalPromptParts.push(remainingPrompt.substring(lastIndex));

  // Pass 2: the remaining text, token by token.
  const currentPromptText = finalPromptParts.join('');
  finalPromptParts = [];
  const segments = currentPromptText.split(SPLIT_KEEP_DELIMITERS_REGEX).filter((s) => s && s.length > 0);
  const mergedSegments: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    const next = segments[i + 1];
    const next2 = segments[i + 2];
    const hasColon = seg && seg.includes(':');
    const weightPrefixPattern = /^[a-zA-Z0-9_.-]+(?::\d*)?$/;
    if (hasColon && weightPrefixPattern.test(seg) && next === '.' && next2 && /^\d+$/.test(next2)) {
      mergedSegments.push(seg + '.' + next2);
      i += 2;
      continue;
    }
    const isPlainWordToken = /^[a-zA-Z0-9_][a-zA-Z0-9_-]*$/.test(seg);
    const nextIsDotModifier = next && /^\.+$/.test(next);
    const nextIsExclModifier = next && /^!+$/.test(next);
    if (isPlainWordToken && (nextIsDotModifier || nextIsExclModifier)) {
      mergedSegments.push(seg + next);
      i += 1;
      continue;
    }
    mergedSegments.push(seg);
  }

  for (const segment of mergedSegments) {
    // As the platform writes it: .test() on module-level /g regexes (their lastIndex state included).
    if (LORA_TAG_REGEX.test(segment)) {
      finalPromptParts.push(segment);
      continue;
    }
    if (SPLIT_KEEP_DELIMITERS_REGEX.test(segment) && segment.match(SPLIT_KEEP_DELIMITERS_REGEX)![0] === segment) {
      finalPromptParts.push(segment);
      continue;
    }
    const wordMatch = segment.match(/^([a-zA-Z0-9_.-]+)(?::(\d*\.?\d+))?/);
    let baseToken: string;
    let userSpecifiedWeight: number | null = null;
    let trailingPunctuation = '';
    const originalSegmentForPush = segment;
    if (wordMatch) {
      baseToken = wordMatch[1].toLowerCase();
      if (wordMatch[2] !== undefined) userSpecifiedWeight = parseFloat(wordMatch[2]);
      const matchedPartLength = wordMatch[0].length;
      if (segment.length > matchedPartLength) trailingPunctuation = segment.substring(matchedPartLength);
    } else {
      baseToken = segment.toLowerCase().replace(/[.,!?()[\]{}'"]+$/, '');
    }
    let dotExclWeightOffset = 0;
    if (userSpecifiedWeight === null) {
      const trailingDots = baseToken.match(/\.+$/);
      if (trailingDots) {
        dotExclWeightOffset = -0.2 * trailingDots[0].length;
        baseToken = baseToken.slice(0, -trailingDots[0].length);
      } else {
        const leadingExclamations = trailingPunctuation.match(/^!+/);
        if (leadingExclamations) {
          dotExclWeightOffset = 0.2 * leadingExclamations[0].length;
          trailingPunctuation = trailingPunctuation.slice(leadingExclamations[0].length);
        }
      }
    }
    if (!triggerMap.has(baseToken)) {
      finalPromptParts.push(segment);
      continue;
    }
    if (userSpecifiedWeight === 0.0) {
      finalPromptParts.push(originalSegmentForPush);
      continue;
    }
    let potentialLoras = triggerMap.get(baseToken) || [];
    if (toolBaseModel && potentialLoras.length > 0) {
      const upper = toolBaseModel.toUpperCase();
      if (upper === 'SD1.5-XL' || upper === 'SDXL') {
        potentialLoras = potentialLoras.filter((l) => l.checkpoint && ['SD1.5', 'SDXL', 'ILLUSTRIOUS'].includes(l.checkpoint.toUpperCase()));
      } else if (upper === 'SD1.5') {
        potentialLoras = potentialLoras.filter((l) => l.checkpoint && l.checkpoint.toUpperCase() === 'SD1.5');
      } else if (upper === 'FLUX') {
        potentialLoras = potentialLoras.filter((l) => l.checkpoint && l.checkpoint.toUpperCase().startsWith('FLUX'));
      } else if (upper === 'KONTEXT') {
        potentialLoras = potentialLoras.filter((l) => {
          const cp = l.checkpoint?.toUpperCase() || '';
          return cp === 'KONTEXT' || cp.startsWith('FLUX');
        });
      } else {
        potentialLoras = potentialLoras.filter((l) => l.checkpoint && l.checkpoint.toUpperCase() === upper);
      }
    }
    let selectedLora: TriggerMapEntry | null = null;
    if (potentialLoras.length > 0) {
      const byNewest = (a: TriggerMapEntry, b: TriggerMapEntry) => new Date(b.updatedAt as string).getTime() - new Date(a.updatedAt as string).getTime();
      const privateLoras = potentialLoras.filter((l) => l.access === 'private' && l.ownerAccountId === masterAccountId);
      const sharedPrivateLoras = potentialLoras.filter((l) => l.access === 'private' && l.ownerAccountId !== masterAccountId);
      const publicLoras = potentialLoras.filter((l) => l.access === 'public');
      if (privateLoras.length > 0) selectedLora = privateLoras.sort(byNewest)[0];
      else if (sharedPrivateLoras.length > 0) selectedLora = sharedPrivateLoras.sort(byNewest)[0];
      else if (publicLoras.length > 0) {
        publicLoras.sort(byNewest);
        if (publicLoras.length > 1) warnings.push(`Multiple public LoRAs for trigger '${baseToken}'. Slugs: ${publicLoras.map((l) => l.slug).join(', ')}. Using: ${publicLoras[0].slug}.`);
        selectedLora = publicLoras[0];
      }
    }
    if (!selectedLora) {
      finalPromptParts.push(originalSegmentForPush);
      continue;
    }
    if (lorasAppliedThisRun.has(selectedLora.slug)) {
      finalPromptParts.push(trailingPunctuation);
      continue;
    }
    const baseWeight = selectedLora.defaultWeight || 1.0;
    const weight = userSpecifiedWeight !== null ? userSpecifiedWeight : Math.round((baseWeight + dotExclWeightOffset) * 100) / 100;
    const loraTag = `<lora:${selectedLora.slug}:${weight}>`;
    appliedLoras.push({ slug: selectedLora.slug, weight, originalWord: segment, replacedWord: loraTag, modelId: selectedLora.modelId, ownerAccountId: selectedLora.ownerAccountId || null });
    lorasAppliedThisRun.add(selectedLora.slug);
    finalPromptParts.push(loraTag);
    if (!baseToken.startsWith('lorahash_')) finalPromptParts.push(baseToken);
    finalPromptParts.push(trailingPunctuation);
  }
  return { modifiedPrompt: finalPromptParts.join(''), appliedLoras, warnings };
}

/** uploadToComfyDeploy's payload for a model without an HF repo: what ComfyUI's `loras` folder gets, from where. */
export function comfyDeployUpload(loraModel: { slug: string; name: string; publishedTo?: Record<string, unknown> }): { folderPath: string; filename: string; downloadLink: string } | { error: string } {
  if (!loraModel?.publishedTo) return { error: 'No publishedTo info in model record' };
  const { huggingfaceRepo, cloudflareUrl, modelFileUrl } = loraModel.publishedTo as { huggingfaceRepo?: string; cloudflareUrl?: string; modelFileUrl?: string };
  const filename = `${loraModel.slug}.safetensors`;
  const folderPath = 'loras';
  if (huggingfaceRepo) return { folderPath, filename, downloadLink: `https://huggingface.co/${huggingfaceRepo}/resolve/main/${loraModel.name}.safetensors` };
  if (cloudflareUrl || modelFileUrl) return { folderPath, filename, downloadLink: (cloudflareUrl || modelFileUrl)! };
  return { error: 'No download URL available' };
}
