use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ringer_webhook_dispatcher::Config::parse();
    ringer::telemetry::init(config.common.log_format);
    let shutdown = ringer::shutdown::on_signal();
    ringer_webhook_dispatcher::run(config, shutdown).await
}
