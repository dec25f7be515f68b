//! The embedded default broker: librdkafka's in-process mock cluster. It makes
//! `weir demo` and the fast tests run with no service installed. It is not a
//! substitute for a real broker: the integration tests use a real one.

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A one-broker in-process Kafka cluster. Drop every client using it before
/// dropping this, or librdkafka logs a flood of transport errors.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts the cluster and creates `topic` with `partitions` partitions.
    pub fn start(topic: &str, partitions: i32) -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic(topic, partitions, 1)?;
        Ok(Self { cluster })
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster.create_topic(topic, partitions, 1)
    }

    /// The bootstrap list clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
