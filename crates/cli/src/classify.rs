//! `imgclass classify`: classifies image files in this process and prints the top labels (no
//! server, no database).

use crate::args::{ClassifyArgs, ProviderArg};
use crate::node::cores;
use anyhow::Result;
use imgclass_classifier::{Classifier, ImaggaClassifier, Model, ModelRepository, NoopClassifier};
use std::process::ExitCode;

pub fn run(args: ClassifyArgs) -> Result<ExitCode> {
    let mut classifier: Box<dyn Classifier> = match args.model.provider {
        ProviderArg::Builtin => {
            let model = chosen_model(&args)?;
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

/// The model to classify with: the built-in one (or --model FILE --labels FILE), or the one
/// --model NAME names among the built-in one and those of --models.
fn chosen_model(args: &ClassifyArgs) -> Result<Model> {
    let builtin = Model::load(&args.model.source())?;
    let Some(name) = args.model.named_model() else {
        return Ok(builtin);
    };
    if builtin.info().name == name {
        return Ok(builtin);
    }
    let Some(dir) = &args.model.models else {
        anyhow::bail!(
            "no model named {name:?}: the built-in model is {:?}; give --models DIR for others",
            builtin.info().name
        );
    };
    let mut repo = ModelRepository::load(dir)?;
    if let Some(i) = repo.models.iter().position(|m| m.info().name == name) {
        return Ok(repo.models.swap_remove(i));
    }
    if let Some(e) = repo.errors.iter().find(|e| e.folder.ends_with(name)) {
        anyhow::bail!("the model {name:?} cannot be loaded: {}", e.error);
    }
    let mut names = vec![builtin.info().name.clone()];
    names.extend(repo.models.iter().map(|m| m.info().name.clone()));
    anyhow::bail!(
        "no model named {name:?}; the models are: {}",
        names.join(", ")
    )
}
