import type { Recipe, TestRunProfile } from '@stationthis/recipes';
import type { WorkerConfig } from '../../config/worker-config';

/**
 * The recipe's test-run profile when this worker runs GPU recipes as CPU
 * tests (WORKER_CPU_TEST_RUNS): never on a production worker, never for a
 * recipe that has no profile.
 */
export function testRunOf(config: Pick<WorkerConfig, 'cpuTestRuns'>, recipe: Recipe): TestRunProfile | undefined {
  return config.cpuTestRuns && recipe.gpu.count > 0 ? recipe.testRun : undefined;
}
