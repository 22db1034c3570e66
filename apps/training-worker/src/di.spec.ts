import 'reflect-metadata';
import { container, injectable } from 'tsyringe';

@injectable()
class Clock {
  now(): number {
    return 42;
  }
}

@injectable()
class UsesClock {
  constructor(readonly clock: Clock) {}
}

describe('decorator metadata under jest', () => {
  it('resolves a class by its constructor parameter types', () => {
    const child = container.createChildContainer();
    const resolved = child.resolve(UsesClock);
    expect(resolved.clock).toBeInstanceOf(Clock);
    expect(resolved.clock.now()).toBe(42);
  });
});
