//! Guides rendered with the API docs: what the library guarantees and which test holds
//! each guarantee ([`guarantees`]), how it is tortured, fuzzed and loaded
//! ([`testing`]), and what bounds its speed, with the figures and the commands that
//! print them ([`performance`]).

pub mod guarantees;
pub mod performance;
pub mod testing;
