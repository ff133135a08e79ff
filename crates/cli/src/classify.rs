//! `imgclass classify`: classifies image files in this process and prints the top labels (no
//! server, no database).

use crate::args::{ClassifyArgs, ProviderArg};
use crate::node::cores;
use anyhow::Result;
use imgclass_classifier::{Classifier, ImaggaClassifier, Model, NoopClassifier};
use std::process::ExitCode;

pub fn run(args: ClassifyArgs) -> Result<ExitCode> {
    let mut classifier: Box<dyn Classifier> = match args.model.provider {
        ProviderArg::Builtin => {
            let model = Model::load(&args.model.source())?;
            Box::new(model.session(cores(), usize::from(args.model.top_k))?)
        }
        ProviderArg::Imagga => Box::new(ImaggaClassifier::new(&args.model.imagga()?)?),
        ProviderArg::Noop => Box::new(NoopClassifier::default()),
    };
    let mut failed = false;
    for path in &args.files {
        let result = std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| classifier.classify(&bytes).map_err(anyhow::Error::from));
        match result {
            Ok(c) => {
                println!("{}", path.display());
                for p in &c.predictions {
                    println!("  {:>6.2}%  {}", p.probability * 100.0, p.label);
                }
                let info = classifier.info();
                println!(
                    "  (decode {:.1} ms, inference {:.1} ms; provider {}, model {} {})",
                    c.decode_ms, c.inference_ms, info.provider, info.name, info.version
                );
            }
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
