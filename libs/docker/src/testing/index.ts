/**
 * Test support for code that runs containers: `@stationthis/docker/testing`.
 * Not part of the production entry point.
 */
export {
  FakeContainerRuntime,
  type FakeContainerRuntimeOptions,
  type FakeContainerScript,
  type FakeScriptSource,
  type FakeLine,
  type FakeEnd,
  type FakeRunRecord,
  type FakeContainer,
} from './fake-container-runtime';
export {
  describeContainerRuntimeConformance,
  type ContainerRuntimeConformanceTarget,
  type ConformanceBehaviour,
} from './conformance';
