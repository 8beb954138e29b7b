//! The root package of the graft workspace. It holds no code of its own: its one
//! integration test binary (`tests/tests.rs`) drives the stage binaries through a store.
