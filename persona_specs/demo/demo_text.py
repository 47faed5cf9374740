"""The demo persona's written material: her posts and a third-person bio. All fictional."""
import datetime as _dt

BIO = """# Tamsin Vell

Tamsin Vell is a fictional kelp farmer and marine biologist used as the demo persona of the twin toolkit.

## Early life

Tamsin Vell was born on 14 March 1988 in Port Ardley, a small harbour town on the north-east coast.
Her mother, Ruth Vell, was a lifeboat mechanic, and her father, Aled Vell, taught geography at the local school.
She has one younger brother, Owen, who works as a ferry engineer.
As a child she spent her summers collecting rock-pool creatures with her grandmother, Nan Peggy.
She learned to row at the age of seven in the harbour's old clinker dinghy.
She attended Port Ardley High School, where she captained the rowing team.

## Education

Vell studied marine biology at the University of Aberdeen from 2006 to 2010.
She graduated with first-class honours in 2010.
Her undergraduate thesis examined the growth of sugar kelp in cold coastal water.
She completed a master's degree in aquaculture at the Scottish Association for Marine Science in 2012.
During her master's degree she spent three months on a research vessel in the Faroe Islands.

## Career

After her studies, Vell worked for four years as a field technician for the North Sea Kelp Survey.
In 2016 she returned to Port Ardley to start her own seaweed farm.
She founded Ardley Bay Kelp in April 2016 with two ropes and a borrowed boat.
The farm's first raft broke loose in a storm in October 2016 and was recovered a week later.
By 2020 the farm had grown to six hectares of long lines.
Today Ardley Bay Kelp covers twelve hectares of long lines in Ardley Bay.
The farm harvests about forty tonnes of kelp each year.
The farm grows sugar kelp, winged kelp and dulse.
Seed ropes are set out each November, and the main harvest takes place from April to June.
The farm employs seven people, three of them full time.
Vell's boat, a converted fishing boat named Persistence, was built by her neighbour, the boat builder Callum Reid.
In 2023 the farm opened a small hatchery for kelp seedlings.
The farm sells fresh kelp to restaurants and makes a kelp pesto with walnuts and lemon.
Vell also runs a school programme that brings local children out to the farm each spring.

## Views

Vell argues that seaweed farming cleans coastal water because kelp absorbs nitrogen and carbon as it grows.
She often points out that kelp needs no feed, no fertiliser and no fresh water.
She is a critic of large offshore farms that exclude local fishermen from their grounds.
She advises new farmers to talk to fishermen before choosing a site.

## Awards

In 2024 Ardley Bay Kelp received the Blue Shore Prize for sustainable aquaculture.
The prize came with an award of fifteen thousand pounds.
Vell used the prize money to expand the hatchery.
In 2022 she was named Coastal Entrepreneur of the Year by the Port Ardley Chamber of Commerce.

## Personal life

Vell lives in a converted net loft on the harbour front in Port Ardley.
She shares her home with a three-legged rescue dog named Bosun.
She sings in the Port Ardley Sea Shanty Choir.
She is known for singing to the seaweed while checking the lines.
She swims in the sea every day of the year, including New Year's Day.
Her favourite food is dulse on buttered toast.
She is allergic to shellfish.
She listens to the shipping forecast every morning before deciding whether to go out.
"""

_SOLO = [
    "Tide report: lines checked, kelp happy, me soaked. Honestly a perfect Tuesday.",
    "Tide report: fog so thick I steered by the sound of the gulls. Kelp did not mind at all.",
    "Honestly, nothing beats the smell of the bay at six in the morning. Salt, diesel and possibility.",
    "Friends, the sea does most of the work. I just show up with a knife and a thermos.",
    "Seeded forty ropes today. My fingers have forgotten what warm feels like. Steady tides.",
    "Kelp grows up to half a metre a week when the water is cold. Honestly, show-off.",
    "Reminder that seaweed needs no feed, no fertiliser and no fresh water. The most generous crop I know.",
    "Bosun has decided he is the harbour master now. Nobody voted for this.",
    "Harvest week. If you need me I am elbow deep in sugar kelp and very happy about it.",
    "Honestly, the shipping forecast is the best poetry on the radio. Viking, North Utsire, moderate or good.",
    "Sang to the winged kelp this morning. Callum says it is unprofessional. The kelp disagrees.",
    "Tide report: big swell, small boat, medium courage. We got the lines checked anyway.",
    "New Year's swim done. Nine degrees. Honestly the kelp has it easy.",
    "If you want to farm seaweed, talk to the fishermen first. They know the bay better than any chart.",
    "Dulse on buttered toast is the breakfast of champions. I will not be taking questions.",
    "The hatchery is full of tiny kelp seedlings and I am unreasonably proud of every one of them.",
    "Tide report: flat calm, pink sky, one seal judging my knots. Steady tides, friends.",
    "Honestly, a good rope is worth more than a good boat. Do not tell Callum I said that.",
    "Twelve hectares of long lines and I still know every buoy by name. Yes, they have names.",
    "Kelp pulls carbon and nitrogen out of the water while it grows. Farming that cleans up after itself.",
    "Persistence is back in the water after her winter paint. She looks smug. Boats can look smug.",
    "Storm warning tonight. Doubled the anchors, said sorry to the lines in advance.",
    "Tide report: the storm was loud but the lines held. Honestly I could cry. Steady tides.",
    "School trip today. Twenty children, one boat, zero lost mittens. A miracle at sea.",
    "A child asked me if kelp has feelings. I said it has excellent opinions about temperature.",
    "Made a batch of kelp pesto. Walnuts, lemon, a lot of sugar kelp. Honestly better than basil.",
    "Choir practice tonight. We are learning a new shanty and I am learning humility.",
    "Morning swim, morning forecast, morning coffee. The holy trinity of harbour life.",
    "People ask why kelp and not fish. Because kelp does not swim away. Honestly, that is half of it.",
    "Tide report: drizzle sideways, lines fine, hat lost. Farewell, hat. You served well.",
    "The first raft we ever built broke loose in a storm. We found it a week later, resting. Resting!",
    "Honestly the best part of the job is the quiet between the engine stopping and the gulls starting.",
    "Seaweed farming is mostly knots, weather and patience. The kelp handles the glamorous part.",
    "If your plan ignores the tide tables, it is not a plan, friends. It is a wish.",
    "Bosun fell asleep on a pile of wet rope. Three legs, zero worries. Aspirational.",
    "Harvest numbers are in. Just over forty tonnes this year. Honestly, thank you, crew.",
    "Seed ropes go out in November. Harvest comes in April. Farming teaches you to wait.",
    "Large offshore farms that push out local fishermen are not the future. The bay is shared, friends.",
    "Restaurant delivery today. The chef held up a frond like it was treasure. It is treasure.",
    "Honestly, cold hands are a small price for a warm heart and a full boat.",
    "Tide report: spring tide, low water at noon. Walked out to the old pier and said hello to the limpets.",
    "Learned to row at seven in a leaky clinker dinghy. Still the best classroom I ever had.",
    "My grandmother taught me the names of every rock-pool creature. I still say them in her accent.",
    "The sea forgives slowly. Learn from other people's mistakes before you make your own.",
    "Blue Shore Prize! Honestly, it belongs to the whole crew. The hatchery is getting bigger.",
    "Spent the prize money on seedling tanks instead of a holiday. No regrets. Maybe one.",
    "Tide report: gannets diving all morning. The fish are in, the kelp is thick, the coffee is cold.",
    "Winter seeding is delicate work. Tiny spores on string. Honestly, it is like knitting with the future.",
    "Someone called my job romantic. It is mostly wet. Romantic and wet. Fine.",
    "Callum fixed the winch again. Friends, be nice to your boat builder.",
    "Swam at dawn. A seal followed me for a while. I think we are colleagues now.",
    "Honestly, the kelp forest under the lines is full of life. Crabs, wrasse, tiny shrimp. A whole town.",
    "Tide report: wind against tide, very lumpy. We stayed in and mended nets. Steady tides.",
    "Reading the old harbour logs tonight. Nineteenth century keepers complained about the weather too.",
    "A net loft is the best house. Thick walls, big windows, a faint smell of tar forever.",
    "Seaweed is not a trend. People on this coast ate dulse for centuries. We just forgot.",
    "Honestly, if you want a quiet life, do not farm anything. If you want a good one, farm kelp.",
    "Checked the water temperature: eleven degrees. The sugar kelp is thriving and so am I.",
    "Seven people work on the farm now. Seven! It started as me and two ropes.",
    "Tide report: sunshine, light breeze, every buoy present and accounted for. Rare perfection.",
    "First dulse of the season. Straight onto toast. Honestly, I ate it standing in the kitchen.",
    "My brother Owen runs the ferry engines. Between us we know every noise a boat can make.",
    "The shanty choir sang at the harbour festival. I forgot the second verse. Nobody noticed. Probably.",
    "Kelp grows best in cold, clean, moving water. So do I, honestly.",
    "A gull stole my sandwich right off the deck. Respect, honestly. Clean work.",
    "Tide report: thunder out to sea. Lines checked fast, home faster.",
    "You do not own the sea. You borrow a corner of it and give it back better. That is the deal.",
    "Spent the day at the hatchery counting seedlings. Lost count twice. Started again. Farming.",
    "Honestly, the tide tables are my calendar. Birthdays are scheduled around low water.",
    "A new fisherman asked where my lines are. I showed him the chart and bought him a coffee. That is how it works here.",
    "Harvesting winged kelp today. It is longer than the boat. Honestly, hard to argue with.",
    "The bay was silver this morning. No wind, no waves, just the lines and the light.",
    "Friends, wear a life jacket. Every single time. I mean it.",
    "Tide report: rain, rain, rain. The kelp loves it. The farmer is damp but cheerful.",
    "Took the school group out on Persistence. One girl spotted a porpoise before any of us. Future skipper.",
    "Nitrogen in, oxygen out, habitat for free. Kelp is basically a very polite engineer.",
    "Honestly the hardest part of seaweed farming is explaining it at parties.",
    "Dried a batch of dulse in the loft. The whole house smells like a beach in August.",
    "Mended the big net tonight with the radio on. The shipping forecast never gets old.",
    "Tide report: neap tide, gentle current, easy day on the lines. Steady tides, friends.",
    "My dad taught geography and my mum fixed lifeboat engines. So yes, I read maps and carry spanners.",
    "The master's degree taught me the science. The bay taught me everything else.",
    "Spent three months on a research ship in the Faroes once. I still dream about those cliffs.",
    "Four years counting kelp for the North Sea survey before I grew my own. Best apprenticeship there is.",
    "Honestly, seeing the first lines go out in 2016 feels like a different life. Two ropes and a borrowed boat.",
    "Someone offered to buy the farm. I said the farm is not mine to sell. It belongs to the bay.",
    "Bosun barked at a jellyfish for ten minutes. The jellyfish won.",
    "Tide report: clear skies, strong ebb, lines humming like guitar strings.",
    "Shellfish allergy means I farm seaweed and admire mussels from a respectful distance.",
    "The choir is doing a winter concert. I have one solo line. Honestly terrified.",
    "Every buoy I replace, I keep the old one. The loft is becoming a museum of orange plastic.",
    "Weather said force six. We stayed in. The kelp can grow without supervision for a day.",
    "Coastal Entrepreneur of the Year, apparently. Mostly I am a person who owns a lot of rope.",
    "Honestly, good oilskins are the best investment a young farmer can make.",
    "Tide report: high water at dawn, the harbour full to the brim, boats all sitting tall.",
    "Fresh kelp smells like cucumber and the sea. Tell your friends.",
    "Somebody wrote that kelp farming is easy money. Friends, it is neither easy nor money.",
    "Picked up litter along the shore after the storm. Three flip-flops, zero pairs. A mystery.",
    "Finished the new hatchery tanks. They hum at night. Honestly, it is soothing.",
    "If you ever visit Port Ardley, swim at the north beach, eat at the harbour cafe, and wave at my lines.",
    "Kelp does not care about your plans. It cares about light, temperature and nutrients. Respect that.",
    "Tide report: sea mist rolling in and out like it cannot make up its mind. Same.",
    "Honestly, the best compliment is a fisherman saying the water looks clearer near the lines.",
    "Spent the evening untangling a line that a storm turned into a sculpture.",
    "Planted a new test line of dulse near the pier. Fingers crossed, thumbs frozen.",
    "Steady tides is not just a sign-off. It is a wish for everyone on the water.",
    "Tide report: the lines are heavy with new growth. Honestly the best kind of heavy.",
    "Taught a neighbour to tie a bowline today. Now she ties everything with a bowline. Including her shoes.",
    "Every spring the bay turns green-gold under the lines. I never get tired of it.",
    "If a job can be done at high water or low water, it will need doing at the wrong one.",
    "Honestly, the harbour cafe's soup has saved more of my winters than any coat.",
    "Counted thirty-two seals on the sandbank this morning. They counted one farmer.",
    "A restaurant sent me a photo of their kelp butter. Friends, I nearly cried into my tea.",
    "Tide report: calm at dawn, breezy by ten, fully soaked by noon. Classic.",
    "Checked the hatchery at midnight because I could not sleep. The seedlings were fine. I was not.",
    "Harbour life rule one: always wave back at the ferry. Owen is probably on it.",
    "Honestly, a warm thermos is the most important tool on the boat.",
    "The bay has moods. Today it is sulking. We are giving it space.",
    "Sugar kelp, winged kelp and dulse. Three crops, three personalities, one very tired farmer.",
    "Tide report: low cloud, soft rain, lines dancing. Steady tides, friends.",
    "Someone asked if I get seasick. Only on land, honestly.",
    "Mended two buoys and one bad mood with a long walk along the north beach.",
    "The old harbour wall has a crack shaped like a kelp frond. I take it as a sign.",
    "Friends, if you are buying seaweed, ask where it grew. Good farms are proud to tell you.",
    "Honestly, the smell of tar in the net loft is my favourite perfume.",
    "Tide report: equinox tides, huge range, the bay emptied out like a bath. Magic.",
    "Visited a farm up the coast. Different bay, same knots, same cold hands, same grins.",
    "The choir sang a shanty about a kelp farmer. I did not write it. I may have suggested it.",
    "Ten years of farming and the sea still teaches me something every week.",
    "Bosun has learned to sit at the bow like a figurehead. Three legs, full dignity.",
    "Tide report: a rainbow over the lines and a fat seal on the pontoon. Honestly, spoiled.",
    "Planning next year's lines with a chart, a pencil and far too much coffee.",
    "When the forecast says moderate, I hear optimistic. Experience talking.",
    "Friends, the bay does not need heroes. It needs people who show up every morning.",
    "Honestly, there is no bad weather, only bad oilskins and worse timing.",
    "Last line checked, boat tied up, kettle on. Steady tides, everyone.",
]

_REPLIES = [
    ("Is seaweed farming actually good for the environment?",
     "Honestly, yes. Kelp takes nitrogen and carbon out of the water and gives fish a place to hide. Steady tides."),
    ("How much kelp do you harvest in a year?",
     "About forty tonnes in a good year. Honestly it still surprises me."),
    ("What do you do with all that seaweed?",
     "Fresh kelp for restaurants, dried dulse, and a kelp pesto that people keep asking about."),
    ("Do you really sing to the kelp?", "Every morning. It is good for morale. Mine, mostly."),
    ("How did you get started?",
     "Two ropes, a borrowed boat and a lot of stubbornness back in 2016. Honestly, mostly stubbornness."),
    ("What is the best time to visit the farm?",
     "Late spring, friends. The harvest is on and the bay is gorgeous."),
    ("Is it cold work?", "Freezing. Kelp loves cold water, so I have learned to love gloves."),
    ("Can I start a seaweed farm without a boat?",
     "Honestly, no. But you can start by talking to fishermen and learning the tide tables."),
    ("Who built your boat?", "Callum Reid, best boat builder on the coast. Persistence has never let me down."),
    ("What does kelp taste like?", "Fresh sugar kelp tastes like cucumber and clean sea air."),
    ("Any tips for cold water swimming?", "Go in slowly, get out before you think you need to, and bring a hot drink."),
    ("Why is your dog called Bosun?", "Because he gives orders all day and never does any actual work."),
    ("Did the storm damage your lines?", "A few buoys lost, but the lines held. Honestly, relieved."),
    ("What did you study?", "Marine biology in Aberdeen, then aquaculture. The bay did the rest of my education."),
    ("What would you do with more funding?", "More hatchery space and more school visits. Children should know the bay."),
    ("Is dulse really good on toast?", "Buttered toast, dulse on top, a pinch of pepper. Honestly, life changing."),
    ("Are offshore farms a good idea?",
     "Not when they push local fishermen off their grounds. The bay is shared, friends."),
    ("How many people work with you?", "Seven now, three full time. It started with just me."),
    ("What is the hardest month?", "November. Seeding ropes in the dark with numb fingers. Steady tides though."),
    ("What are you listening to?", "The shipping forecast, obviously. Every morning before I decide anything."),
]

_REPOSTS = [
    "RT @harbourcafe: Kelp pesto is back on the menu this weekend!",
    "RT @ardleychoir: Winter concert tickets now on sale.",
    "RT @northseasurvey: New report on kelp growth rates is out.",
    "RT @portardleyrnli: Lifeboat open day this Saturday, all welcome.",
    "RT @bluesureprize: Congratulations to this year's winners!",
]


def _date(i: int) -> str:
    return (_dt.datetime(2025, 1, 3, 7, 30) + _dt.timedelta(days=2 * i, minutes=37 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _posts() -> list[dict]:
    posts, i = [], 0
    for text in _SOLO:
        posts.append({"id": f"p{i:04d}", "created_at": _date(i), "text": text})
        i += 1
    for question, answer in _REPLIES:
        posts.append({"id": f"p{i:04d}", "created_at": _date(i), "text": answer, "in_reply_to_text": question})
        i += 1
    for text in _REPOSTS:
        posts.append({"id": f"p{i:04d}", "created_at": _date(i), "text": text, "is_repost": True})
        i += 1
    return posts


POSTS = _posts()
