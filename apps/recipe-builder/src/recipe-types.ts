/**
 * The slice of the Recipe contract (libs/recipes/src/contract.ts) that image
 * building needs.
 * TEMPORARY copy until @stationthis/recipes exports the contract; then this
 * file becomes a re-export (see git history / report).
 */
export interface EngineRef {
  name: 'kohya-sd-scripts' | 'musubi-tuner' | 'ai-toolkit' | 'stationthis-smoke';
  repository: string;
  commit: string;
}

export interface BaseImageRef {
  image: string;
  digest?: string;
}

export interface ImageSpec {
  name: string;
  builderBase: BaseImageRef;
  runtimeBase: BaseImageRef;
  builderAptPackages: string[];
  runtimeAptPackages: string[];
  python: string;
  pipRequirements: string[];
  pipExtraIndexUrls?: string[];
  engineSource: { kind: 'git'; installCommand?: string[] } | { kind: 'bundled'; files: Record<string, string> };
  networkedSteps: string[];
  healthcheck: string[];
  workdir: string;
  env?: Record<string, string>;
}

/** What the Dockerfile renderer reads from a recipe: identity, engine and image spec. */
export interface BuildableRecipe {
  id: string;
  version: string;
  family: 'SDXL' | 'FLUX' | 'WAN' | 'SMOKE';
  displayName: string;
  description: string;
  product: boolean;
  engine: EngineRef;
  image: ImageSpec;
}
