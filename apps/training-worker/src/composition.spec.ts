import 'reflect-metadata';
import { container } from 'tsyringe';
import { assertBindings } from './composition';

describe('assertBindings', () => {
  it('fails at start naming each missing port and the library that provides it', () => {
    const empty = container.createChildContainer();
    let message = '';
    try {
      assertBindings(empty);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/composition is incomplete/);
    expect(message).toMatch(/TrainingJobRepository \(from libs\/db/);
    expect(message).toMatch(/WeightCache \(from libs\/storage registerStorage\(\)\)/);
    expect(message).toMatch(/from libs\/docker registerDocker\(\)/);
  });
});
