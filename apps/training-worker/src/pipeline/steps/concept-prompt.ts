/**
 * The transformation prompt a Kontext concept job trains every pair on, read
 * where the platform reads it (DatasetDownloader.js
 * `_extractControlPromptFromGenerationOutputs`): the control set's results
 * link the generations that made them (`results[i].generationOutputId`, an
 * id in the platform's `generationOutputs` collection), and the first of
 * those whose `requestPayload` has an `input_prompt`, `prompt` or `text` gives
 * the prompt. Without one, the control set's own `config.prompt` applies
 * (resolveControlPairs). Which results count, in which order, and which
 * payload field wins are libs/recipes' pure rules; this only reads.
 */
import { inject, injectable } from 'tsyringe';
import type { Collection, Db, Filter, ObjectId } from 'mongodb';
import { idForms, MONGO_DB } from '@stationthis/db';
import { conceptPromptOutputIds, promptOfRequestPayload, type ControlDatasetDoc } from '@stationthis/recipes';
import { JobFailure } from '../failures';

/** The platform's collection of generation records (GenerationOutputsDB, src/core/services/db/generationOutputsDb.js). */
export const GENERATION_OUTPUTS_COLLECTION = 'generationOutputs';

/** The fields of a generation record this reads. */
interface GenerationOutputDoc {
  _id: ObjectId | string;
  requestPayload?: unknown;
}

/** Longest concept prompt kept (characters). */
export const CONCEPT_PROMPT_MAX_CHARS = 2000;

@injectable()
export class ConceptPromptReader {
  private readonly outputs: Collection<GenerationOutputDoc>;

  constructor(@inject(MONGO_DB) db: Db) {
    this.outputs = db.collection<GenerationOutputDoc>(GENERATION_OUTPUTS_COLLECTION);
  }

  /**
   * The prompt of the first generation linked from the control set
   * resolveControlPairs will choose for (dataset, controlSetId) that has one,
   * or undefined: no such set (legacy controlImages, a refused request), no
   * linked generation, or none with a prompt (a deleted record is skipped, as
   * the platform skips one it cannot read). One query however many results.
   * Throws JobFailure 'infrastructure' when the database cannot be read: the
   * captions would silently change, so the job is retried instead.
   */
  async read(dataset: ControlDatasetDoc, controlSetId?: string): Promise<string | undefined> {
    const ids = conceptPromptOutputIds(dataset, controlSetId);
    if (ids.length === 0) return undefined;
    let docs: GenerationOutputDoc[];
    try {
      docs = await this.outputs
        .find({ _id: { $in: ids.flatMap((id) => idForms(id)) } } as Filter<GenerationOutputDoc>, {
          projection: { 'requestPayload.input_prompt': 1, 'requestPayload.prompt': 1, 'requestPayload.text': 1 },
        })
        .toArray();
    } catch (e) {
      throw new JobFailure(
        'infrastructure',
        `Could not read the transformation prompt of the control set's generations (${GENERATION_OUTPUTS_COLLECTION}: ${(e as Error).message}). Nothing was charged. The job is retried while attempts remain; if this keeps failing, the worker's database user needs read access to ${GENERATION_OUTPUTS_COLLECTION}.`,
        { cause: e },
      );
    }
    const byId = new Map(docs.map((d) => [String(d._id), d]));
    for (const id of ids) {
      const prompt = promptOfRequestPayload(byId.get(id)?.requestPayload);
      // Bounded: it becomes every caption (the text encoders read at most 512 tokens of it anyway).
      if (prompt) return prompt.length > CONCEPT_PROMPT_MAX_CHARS ? prompt.slice(0, CONCEPT_PROMPT_MAX_CHARS) : prompt;
    }
    return undefined;
  }
}
