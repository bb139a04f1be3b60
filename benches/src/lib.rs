//! Criterion benches of gatewayd; see benches/.
