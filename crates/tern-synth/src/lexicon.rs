//! The synthetic language ("Ternish") and its translation partner ("Zemic"):
//! made-up words built from syllables by a fixed generator, so the lexicon is
//! the same in every build and owes nothing to any natural language.
//!
//! # Ternish
//! - Nouns are `CVCV` (`tomi`); the plural adds `n` (`tomin`).
//! - Verbs are a `CVCVC` stem with `a` for a singular subject and `o` for a
//!   plural one (`mirata` / `mirato`).
//! - Adjectives are `CVCCV` (`belsi`) and do not inflect; they follow the noun.
//! - Determiners agree with their noun: `ka` (singular), `ki` (plural).
//!
//! A sentence is subject, verb, object and a full stop, e.g.
//! `ka tomi belsi mirata ki velon .` ("the tomi, belsi, mirats the velons"):
//! the verb agrees with the subject, each determiner with its own noun.
//!
//! # Zemic
//! One `VCVC` word per Ternish noun (`oxaj`), over consonants Ternish never
//! uses, so the two word sets cannot be confused.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::rng::Rng;

/// Ternish consonants.
const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
/// Vowels of both languages.
const VOWELS: &[u8] = b"aeiou";
/// Zemic consonants (none of them Ternish).
const ZEMIC_CONSONANTS: &[u8] = b"hjqwxy";

/// Number of nouns (and of Zemic words).
pub const NOUNS: usize = 64;
/// Number of verbs.
pub const VERBS: usize = 32;
/// Number of adjectives.
pub const ADJECTIVES: usize = 24;

/// Singular determiner.
pub const DET_SINGULAR: &str = "ka";
/// Plural determiner.
pub const DET_PLURAL: &str = "ki";

/// Seed of the lexicon generator; changing it changes every word.
const LEXICON_SEED: u64 = 0x7E27_5157_0001;

/// A word with a singular and a plural form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inflected {
    pub singular: String,
    pub plural: String,
}

impl Inflected {
    /// The form for a singular (`false`) or plural (`true`) subject / noun.
    pub fn form(&self, plural: bool) -> &str {
        if plural {
            &self.plural
        } else {
            &self.singular
        }
    }
}

/// Every made-up word of both languages.
#[derive(Clone, Debug)]
pub struct Lexicon {
    /// Ternish nouns.
    pub nouns: Vec<Inflected>,
    /// Ternish verbs.
    pub verbs: Vec<Inflected>,
    /// Ternish adjectives.
    pub adjectives: Vec<String>,
    /// `zemic[i]` translates `nouns[i].singular`.
    pub zemic: Vec<String>,
}

impl Lexicon {
    /// The lexicon (built once, on first use).
    pub fn get() -> &'static Lexicon {
        static LEXICON: OnceLock<Lexicon> = OnceLock::new();
        LEXICON.get_or_init(Lexicon::build)
    }

    /// Build the lexicon, avoiding every word in `reserved` and any clash
    /// between two generated forms.
    fn build() -> Lexicon {
        let mut taken: BTreeSet<String> = crate::vocab::fixed_words()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rng = Rng::new(LEXICON_SEED, "lexicon", 0);
        let syllable = |rng: &mut Rng, cons: &[u8]| -> String {
            let c = *rng.pick(cons) as char;
            let v = *rng.pick(VOWELS) as char;
            format!("{c}{v}")
        };
        // Draw words of one shape until `n` new ones (all forms unused) exist.
        let mut draw = |n: usize,
                        rng: &mut Rng,
                        shape: &dyn Fn(&mut Rng) -> String,
                        forms: &dyn Fn(&str) -> Vec<String>|
         -> Vec<Vec<String>> {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let stem = shape(rng);
                let f = forms(&stem);
                let distinct: BTreeSet<&String> = f.iter().collect();
                if distinct.len() == f.len() && f.iter().all(|w| !taken.contains(w)) {
                    taken.extend(f.iter().cloned());
                    out.push(f);
                }
            }
            out
        };
        let nouns = draw(
            NOUNS,
            &mut rng,
            &|r| format!("{}{}", syllable(r, CONSONANTS), syllable(r, CONSONANTS)),
            &|s| vec![s.to_string(), format!("{s}n")],
        );
        let verbs = draw(
            VERBS,
            &mut rng,
            &|r| {
                let c = *r.pick(CONSONANTS) as char;
                format!("{}{}{c}", syllable(r, CONSONANTS), syllable(r, CONSONANTS))
            },
            &|s| vec![format!("{s}a"), format!("{s}o")],
        );
        let adjectives = draw(
            ADJECTIVES,
            &mut rng,
            &|r| {
                let first = syllable(r, CONSONANTS);
                let c = *r.pick(CONSONANTS) as char;
                format!("{first}{c}{}", syllable(r, CONSONANTS))
            },
            &|s| vec![s.to_string()],
        );
        let zemic = draw(
            NOUNS,
            &mut rng,
            &|r| {
                let v = *r.pick(VOWELS) as char;
                let s = syllable(r, ZEMIC_CONSONANTS);
                let c = *r.pick(ZEMIC_CONSONANTS) as char;
                format!("{v}{s}{c}")
            },
            &|s| vec![s.to_string()],
        );
        let inflected = |v: Vec<Vec<String>>| -> Vec<Inflected> {
            v.into_iter()
                .map(|mut f| {
                    let plural = f.pop().expect("two forms");
                    let singular = f.pop().expect("two forms");
                    Inflected { singular, plural }
                })
                .collect()
        };
        Lexicon {
            nouns: inflected(nouns),
            verbs: inflected(verbs),
            adjectives: adjectives.into_iter().flatten().collect(),
            zemic: zemic.into_iter().flatten().collect(),
        }
    }

    /// Every made-up word: determiners, noun and verb forms, adjectives,
    /// Zemic words, in vocabulary order.
    pub fn words(&self) -> Vec<&str> {
        let mut w = vec![DET_SINGULAR, DET_PLURAL];
        for n in &self.nouns {
            w.push(&n.singular);
            w.push(&n.plural);
        }
        for v in &self.verbs {
            w.push(&v.singular);
            w.push(&v.plural);
        }
        w.extend(self.adjectives.iter().map(String::as_str));
        w.extend(self.zemic.iter().map(String::as_str));
        w
    }

    /// The Zemic word for a Ternish singular noun.
    pub fn to_zemic(&self, noun: &str) -> Option<&str> {
        let i = self.nouns.iter().position(|n| n.singular == noun)?;
        Some(&self.zemic[i])
    }

    /// The Ternish singular noun for a Zemic word.
    pub fn from_zemic(&self, word: &str) -> Option<&str> {
        let i = self.zemic.iter().position(|z| z == word)?;
        Some(&self.nouns[i].singular)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_and_shaped() {
        let lex = Lexicon::get();
        let words = lex.words();
        let set: BTreeSet<&str> = words.iter().copied().collect();
        assert_eq!(set.len(), words.len(), "duplicate words");
        assert_eq!(words.len(), 2 + 2 * NOUNS + 2 * VERBS + ADJECTIVES + NOUNS);
        let is_c = |c: char| CONSONANTS.contains(&(c as u8));
        let is_v = |c: char| VOWELS.contains(&(c as u8));
        let is_z = |c: char| ZEMIC_CONSONANTS.contains(&(c as u8));
        let fits = |w: &str, shape: &[&dyn Fn(char) -> bool]| {
            w.chars().count() == shape.len() && w.chars().zip(shape).all(|(c, f)| f(c))
        };
        for n in &lex.nouns {
            assert!(fits(&n.singular, &[&is_c, &is_v, &is_c, &is_v]), "{n:?}");
            assert_eq!(n.plural, format!("{}n", n.singular));
        }
        for v in &lex.verbs {
            assert!(fits(
                &v.singular,
                &[&is_c, &is_v, &is_c, &is_v, &is_c, &|c| c == 'a']
            ));
            assert_eq!(v.plural[..5], v.singular[..5]);
            assert!(v.plural.ends_with('o'));
        }
        for a in &lex.adjectives {
            assert!(fits(a, &[&is_c, &is_v, &is_c, &is_c, &is_v]), "{a}");
        }
        for z in &lex.zemic {
            assert!(fits(z, &[&is_v, &is_z, &is_v, &is_z]), "{z}");
        }
        for w in crate::vocab::fixed_words() {
            assert!(
                !set.contains(w),
                "made-up word {w} clashes with a fixed token"
            );
        }
    }

    #[test]
    fn translation_is_a_bijection() {
        let lex = Lexicon::get();
        for n in &lex.nouns {
            let z = lex.to_zemic(&n.singular).unwrap();
            assert_eq!(lex.from_zemic(z), Some(n.singular.as_str()));
        }
        assert_eq!(lex.to_zemic("nothing"), None);
    }
}
