//! The processors behind the DSL operators, all built on the Processor API
//! (sources excepted: they turn the task's raw input into typed records).

pub(crate) mod aggregate;
pub(crate) mod join;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod stateless;
pub(crate) mod window;
