//! The Docker Swarm backend.
